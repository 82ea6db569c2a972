"""OpenAI chat requests sent to ollama's /api/chat and answered back in OpenAI's shape
(proxy/backends/openai_bridge.py, whose pure translation tests/unit/backends tests), through
kvproxy with the real ``openai`` SDK against a fake ollama (docs/ollama.md: no ollama binary
can be installed here)."""

from __future__ import annotations

import json
from typing import Any

import openai
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.backends.upstream import UpstreamSpec
from proxy.config.settings import Settings
from proxy.web.app import create_app
from tests.integration.test_ollama_keep import FakeOllama

DONE = {"done": True, "done_reason": "stop", "prompt_eval_count": 30, "eval_count": 2,
        "message": {"role": "assistant", "content": ""}}  # fmt: skip


class FakeOllamaWithV1(FakeOllama):
    """ollama's /v1 runs a model at the server's default context (reloading it if the
    loaded runner has another), and /api/chat streams NDJSON when asked."""

    def app(self) -> web.Application:
        app = super().app()
        app.router.add_post("/v1/chat/completions", self.v1)
        return app

    async def v1(self, request: web.Request) -> web.Response:
        body = await request.json()
        if self.loaded.get(body["model"]) != self.default_ctx:
            self.loaded[body["model"]] = self.default_ctx
            self.loads += 1
        return web.json_response({"id": "x", "object": "chat.completion", "created": 0,
                                  "model": body["model"], "choices": [{"index": 0,
                                  "message": {"role": "assistant", "content": "ok"},
                                  "finish_reason": "stop"}]})  # fmt: skip

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not body.get("stream", True):
            return await super().chat_with(body)
        await super().chat_with(body)  # the same loading and caching
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        for obj in ({"model": body["model"], "message": {"role": "assistant", "content": "o"},
                     "done": False}, {"model": body["model"], **DONE}):  # fmt: skip
            await resp.write(json.dumps(obj).encode() + b"\n")
        return resp


async def mixed_clients(base: str) -> list[Any]:
    """An agent that sends /api/chat with num_ctx 8192 and /v1 without, alternating."""
    import httpx

    client = openai.AsyncOpenAI(base_url=base + "/v1", api_key="x", max_retries=0)
    out = []
    messages: list[dict[str, Any]] = [{"role": "user", "content": "hi"}]
    async with httpx.AsyncClient(timeout=30) as raw:
        for i in range(2):
            r = await raw.post(base + "/api/chat", json={"model": "m", "messages": messages,
                               "stream": False, "options": {"num_ctx": 8192}})  # fmt: skip
            out.append(r.status_code)
            answer = await client.chat.completions.create(model="m", messages=messages)  # type: ignore[arg-type]
            out.append(answer.choices[0].message.content)
            stream = await client.chat.completions.create(
                model="m", messages=messages, stream=True,  # type: ignore[arg-type]
                stream_options={"include_usage": True})  # fmt: skip
            out.append("".join([c.choices[0].delta.content or "" async for c in stream
                                if c.choices]))  # fmt: skip
            messages = [*messages, {"role": "assistant", "content": "ok"},
                        {"role": "user", "content": f"turn {i}"}]  # fmt: skip
    return out


async def test_openai_and_ollama_clients_share_one_context(tmp_path) -> None:  # type: ignore[no-untyped-def]
    direct_fake, via_fake = FakeOllamaWithV1(), FakeOllamaWithV1()
    async with TestServer(direct_fake.app()) as direct:
        await mixed_clients(str(direct.make_url("")).rstrip("/"))
    assert direct_fake.loads >= 4  # /api/chat at 8192, /v1 at the default: back and forth
    async with TestServer(via_fake.app()) as upstream:
        url = str(upstream.make_url("")).rstrip("/")
        proxy_app = create_app(Settings(upstreams=(UpstreamSpec.parse(url),), data_dir=tmp_path))
        async with TestServer(proxy_app) as proxy:
            out = await mixed_clients(str(proxy.make_url("")).rstrip("/"))
    assert out == [200, "ok", "o"] * 2
    assert via_fake.loads == 1  # one context for the model, whatever the dialect
    assert set(via_fake.keep_alive) == {"30m"}
