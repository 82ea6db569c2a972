"""Anthropic Messages and OpenAI Responses in front of ollama: sent to its /api/chat, so
they run at the model's one stable context and stay loaded (ollama's own /v1/messages and
/v1/responses run at its default context), and answered in each protocol's events, read
here by the real ``anthropic`` and ``openai`` SDKs. A fake ollama (docs/ollama.md: no ollama
binary can be installed here); the same dialects against the real llama-server are
tests/e2e/test_protocols_e2e.py."""

from __future__ import annotations

from pathlib import Path

import anthropic
import httpx
import openai
from aiohttp.test_utils import TestServer

from proxy.backends.upstream import UpstreamSpec
from proxy.config.settings import Settings
from proxy.web.app import create_app
from tests.integration.test_openai_bridge import FakeOllamaWithV1


async def test_both_protocols_share_the_models_one_context(tmp_path: Path) -> None:
    fake = FakeOllamaWithV1()
    async with TestServer(fake.app()) as upstream:
        url = str(upstream.make_url("")).rstrip("/")
        app = create_app(Settings(upstreams=(UpstreamSpec.parse(url),), data_dir=tmp_path))
        async with TestServer(app) as proxy:
            base = str(proxy.make_url("")).rstrip("/")
            async with httpx.AsyncClient(timeout=30) as raw:
                r = await raw.post(base + "/api/chat", json={
                    "model": "m", "stream": False, "options": {"num_ctx": 8192},
                    "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
                assert r.status_code == 200
            claude = anthropic.AsyncAnthropic(base_url=base, api_key="x", max_retries=0)
            async with claude.messages.stream(
                model="m",
                max_tokens=8,
                system=[{"type": "text", "text": "Be brief."}],
                messages=[{"role": "user", "content": "hi"}],
            ) as stream:
                message = await stream.get_final_message()
            assert [b.text for b in message.content if b.type == "text"] == ["o"]
            whole = await claude.messages.create(
                model="m", max_tokens=8, messages=[{"role": "user", "content": "x"}]
            )
            assert whole.content[0].type == "text"
            codex = openai.AsyncOpenAI(base_url=base + "/v1", api_key="x", max_retries=0)
            stream = await codex.responses.create(model="m", input="hi", stream=True)
            done = [e async for e in stream if e.type == "response.completed"]
            assert done[0].response.output_text == "o"
            answer = await codex.responses.create(
                model="m", input="again", previous_response_id=done[0].response.id
            )
            assert answer.output_text == "ok"  # the fake answers "ok" when not streamed
    assert fake.loads == 1  # one context for the model, whatever the protocol
    assert set(fake.keep_alive) == {"30m"}
