"""Chat templates agents use, rendered by kvproxy and by llama-server (issue 11): for each
template in llama.cpp's models/templates/, the embedded server is started with
``--chat-template-file`` and kvproxy verifies its rendering at start. Every conversation
kvproxy renders locally must equal the server's ``/apply-template``; the rest go to the
server, and which features those are is part of the report (docs/tokens.md)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.backends.embedded import EmbeddedServer
from proxy.backends.upstream import Upstream, make_session
from proxy.config.settings import EmbeddedSettings
from proxy.tokens import LocalTokenizer, tokenizer_for
from proxy.tokens.templates import PROBES, features
from tests.llama_sdist import models_dir

pytestmark = pytest.mark.e2e

TEMPLATES = [
    "Qwen-Qwen2.5-7B-Instruct",
    "Qwen-Qwen3-0.6B",
    "Qwen3.5-4B",
    "Qwen3-Coder",
    "meta-llama-Llama-3.1-8B-Instruct",
    "meta-llama-Llama-3.2-3B-Instruct",
    "meta-llama-Llama-3.3-70B-Instruct",
    "openai-gpt-oss-120b",
    "google-gemma-2-2b-it",
    "google-gemma-4-31B-it",
    "mistralai-Mistral-Nemo-Instruct-2407",
    "Mistral-Small-3.2-24B-Instruct-2506",
    "unsloth-mistral-Devstral-Small-2507",
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use",
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B",
    "deepseek-ai-DeepSeek-V3.1",
]
TOOLS = PROBES["tool_calls"]["tools"]
LONG = "\n".join(f"Line {i}: the agent read {i * 13} bytes from file_{i}.py." for i in range(300))


def call(cid: str, name: str, args: dict[str, Any]) -> dict[str, Any]:
    function = {"name": name, "arguments": json.dumps(args)}
    return {"id": cid, "type": "function", "function": function}


CONVERSATIONS: dict[str, dict[str, Any]] = {
    "one turn": {"messages": [{"role": "user", "content": "Hello there!"}]},
    "multi-turn with system": {"messages": [
        {"role": "system", "content": "You are a coding agent.\n\nBe brief."},
        {"role": "user", "content": "What's 2+2?"}, {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And 3+3?"}, {"role": "assistant", "content": "6."},
        {"role": "user", "content": "Thanks!"}]},
    "unicode": {"messages": [{"role": "user", "content": "émoji 🎉 ünïcödé 中文 日本語 ∑∫√ “q”"}]},
    "long content": {"messages": [{"role": "system", "content": "Summarize."},
                                  {"role": "user", "content": LONG}]},
    "tools offered": {"tools": TOOLS, "messages": [
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "Weather in Oslo?"}]},
    "several tool calls and results": {"tools": TOOLS, "messages": [
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "Weather in Oslo and Rome, then list files."},
        {"role": "assistant", "content": "", "tool_calls": [
            call("c1", "get_weather", {"city": "Oslo"}),
            call("c2", "get_weather", {"city": "Rome"})]},
        {"role": "tool", "tool_call_id": "c1", "content": "-2 C, snow"},
        {"role": "tool", "tool_call_id": "c2", "content": "21 C, sun"},
        {"role": "assistant", "content": "", "tool_calls": [call("c3", "run", {"cmd": "ls"})]},
        {"role": "tool", "tool_call_id": "c3", "content": "main.py\nREADME.md"},
        {"role": "user", "content": "Thanks"}]},
    "content parts": {"messages": [
        {"role": "user", "content": [{"type": "text", "text": "Look at this:"},
                                     {"type": "text", "text": "two parts."}]}]},
    "template kwargs": {"chat_template_kwargs": {"enable_thinking": False},
                        "messages": [{"role": "user", "content": "Hi"}]},
    "assistant prefill": {"messages": [
        {"role": "system", "content": "Answer in JSON."},
        {"role": "user", "content": "Colour of the sky?"},
        {"role": "assistant", "content": '{"colour": "'}]},
}  # fmt: skip


@pytest.fixture(params=TEMPLATES)
async def rendered(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                   ) -> AsyncIterator[tuple[str, LocalTokenizer, str]]:  # fmt: skip
    name = request.param
    path = models_dir() / "templates" / f"{name}.jinja"
    settings = EmbeddedSettings(parallel=1, ctx_per_slot=8192,
                                extra_args=("--chat-template-file", str(path)))  # fmt: skip
    server = EmbeddedServer.start(settings, tmp_path_factory.mktemp(name))
    session = make_session(10, 60)
    try:
        up = Upstream(url=server.url, kind="llama", session=session)
        up.props = await up.get_json("/props")
        tok = await tokenizer_for(up, None)
        assert isinstance(tok, LocalTokenizer)
        yield name, tok, server.url
    finally:
        await session.close()
        server.stop()


RESULTS: dict[str, dict[str, str]] = {}


async def test_local_rendering_equals_the_servers_wherever_it_is_used(
    rendered: tuple[str, LocalTokenizer, str],
) -> None:
    name, tok, url = rendered
    row = RESULTS.setdefault(name, {})
    async with httpx.AsyncClient(timeout=60) as client:
        for label, body in CONVERSATIONS.items():
            resp = await client.post(url + "/apply-template", json=body)
            if resp.status_code != 200:
                row[label] = "server refuses"
                continue
            norm = tok.verified.normalization(features(body))
            if norm is None:
                row[label] = "server renders"
                continue
            assert tok.render(body, norm) == resp.json()["prompt"], (name, label)
            row[label] = "local = server"
    # the plain shapes every agent sends are verified for every template here
    assert row["one turn"] == row["multi-turn with system"] == "local = server", (name, row)


def test_report(request: pytest.FixtureRequest) -> None:
    """Prints the N templates x M conversations table (docs/tokens.md has a copy)."""
    if not RESULTS:
        pytest.skip("no template ran")
    labels = list(CONVERSATIONS)
    lines = ["| template | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for name, row in RESULTS.items():
        lines.append(f"| {name} | " + " | ".join(row.get(k, "?") for k in labels) + " |")
    equal = sum(v == "local = server" for row in RESULTS.values() for v in row.values())
    total = sum(len(row) for row in RESULTS.values())
    out = Path(request.config.rootpath) / ".template-report.md"
    out.write_text("\n".join(lines) + f"\n\n{equal} of {total} rendered locally, all equal.\n")
