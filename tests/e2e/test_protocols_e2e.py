"""Anthropic Messages and OpenAI Responses through kvproxy, against the real llama-server:
the model sees the prompt llama-server's own endpoints would give it (same tokens), the
requests are routed and recorded like chat ones, and the second turn of a conversation is
served from the slot, reported the way each client reads it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.backends.embedded import EmbeddedServer
from proxy.records.read import read_records
from tests.conftest import start_proxy, stop_proxy

pytestmark = pytest.mark.e2e

SYSTEM = "You are a coding agent working in a repository.\n" + "".join(
    f"Rule {i}: read a file before editing it and keep changes small.\n" for i in range(30)
)
TOOLS = [
    {
        "name": "read_file",
        "description": "Read a file",
        "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}},
    }
]
ANTHROPIC_TURNS = [
    {"role": "user", "content": [{"type": "text", "text": "List the files.",
                                  "cache_control": {"type": "ephemeral"}}]},
    {"role": "assistant", "content": [{"type": "text", "text": "I will read them."},
                                      {"type": "tool_use", "id": "toolu_1", "name": "read_file",
                                       "input": {"path": "README.md"}}]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                  "content": [{"type": "text", "text": "# kvproxy"}]},
                                 {"type": "text", "text": "Now summarize it."}]},
]  # fmt: skip
SYSTEM_BLOCKS = [
    {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.328; cch=a5145;"},
    {"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}},
]


def anthropic_body(turns: int, stream: bool = False) -> dict[str, Any]:
    return {
        "model": "claude-sonnet",
        "max_tokens": 8,
        "temperature": 0,
        "stream": stream,
        "system": SYSTEM_BLOCKS,
        "tools": TOOLS,
        "messages": ANTHROPIC_TURNS[:turns],
        "metadata": {"user_id": "user_ab_account_cd_session_0f0e0d0c-1111-2222-3333"},
    }


def sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        out.append((lines.get("event", ""), json.loads(lines["data"])))
    return out


def test_anthropic_prompt_equals_llama_servers_own_conversion(
    llama: EmbeddedServer, tmp_path: Path
) -> None:
    """The same token count as llama-server's own /v1/messages/count_tokens, for every
    shape: blocks, tool use and result, a billing header, cache markers."""
    proxy = start_proxy(tmp_path / "proxy", "--upstream", llama.url)
    try:
        for turns in (1, 3):
            body = anthropic_body(turns)
            direct = httpx.post(llama.url + "/v1/messages/count_tokens", json=body, timeout=60)
            ours = httpx.post(proxy.url + "/v1/messages/count_tokens", json=body, timeout=60)
            assert direct.status_code == ours.status_code == 200, (direct.text, ours.text)
            assert ours.json() == direct.json()
        body = {"model": "m", "instructions": SYSTEM,
                "input": [{"role": "user", "content": "hi"},
                          {"type": "message", "role": "assistant",
                           "content": [{"type": "output_text", "text": "hello"}]},
                          {"type": "function_call", "call_id": "c1", "name": "read_file",
                           "arguments": "{\"path\":\"a\"}"},
                          {"type": "function_call_output", "call_id": "c1", "output": "text"},
                          {"role": "user", "content": [{"type": "input_text", "text": "go"}]}],
                "tools": [{"type": "function", "name": "read_file", "parameters": {}}]}  # fmt: skip
        direct = httpx.post(llama.url + "/v1/responses/input_tokens", json=body, timeout=60)
        ours = httpx.post(proxy.url + "/v1/responses/input_tokens", json=body, timeout=60)
        assert direct.status_code == ours.status_code == 200, (direct.text, ours.text)
        assert ours.json() == direct.json()
    finally:
        stop_proxy(proxy)


CLIENTS = Path(__file__).parents[1] / "data" / "clients"
COUNTERS = {"/v1/messages": "/v1/messages/count_tokens",
            "/v1/responses": "/v1/responses/input_tokens"}  # fmt: skip


def test_every_captured_client_request_gives_the_model_the_same_prompt(
    llama: EmbeddedServer, tmp_path: Path
) -> None:
    """What Claude Code and Codex really sent (tests/data/clients), counted by llama-server
    from its own conversion and by kvproxy from its own: the same tokens, every request."""
    proxy = start_proxy(tmp_path / "proxy", "--upstream", llama.url)
    try:
        checked = 0
        for fixture in sorted(CLIENTS.glob("*/*.json")):
            for request in json.loads(fixture.read_text())["requests"]:
                counter = COUNTERS[request["path"]]
                direct = httpx.post(llama.url + counter, json=request["body"], timeout=60)
                ours = httpx.post(proxy.url + counter, json=request["body"], timeout=60)
                assert direct.status_code == ours.status_code == 200, (fixture, ours.text)
                assert ours.json() == direct.json(), fixture
                checked += 1
        assert checked >= 12
    finally:
        stop_proxy(proxy)


def test_anthropic_turns_are_routed_recorded_and_reused(
    llama: EmbeddedServer, tmp_path: Path
) -> None:
    proxy = start_proxy(tmp_path / "proxy", "--upstream", llama.url)
    try:
        first = httpx.post(proxy.url + "/v1/messages?beta=true", json=anthropic_body(1, True),
                           timeout=300)  # fmt: skip
        assert first.status_code == 200, first.text
        assert "x-kvproxy-cache" in first.headers
        events = sse_events(first.text)
        names = [name for name, _ in events]
        assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
        second = httpx.post(proxy.url + "/v1/messages", json=anthropic_body(3, True),
                            timeout=300)  # fmt: skip
        assert second.status_code == 200, second.text
        usage = sse_events(second.text)[-2][1]["usage"]
        assert usage["cache_read_input_tokens"] > 100, usage
        whole = httpx.post(proxy.url + "/v1/messages", json=anthropic_body(3), timeout=300)
        assert whole.json()["type"] == "message", whole.text
        assert whole.json()["usage"]["cache_read_input_tokens"] > 100
        bad = httpx.post(proxy.url + "/v1/messages", json={"messages": "x"}, timeout=60)
        assert bad.status_code == 400
        assert bad.json()["type"] == "error"
        assert bad.json()["error"]["type"] == "invalid_request_error"
    finally:
        stop_proxy(proxy)
    records = [r for r in read_records(proxy.data_dir / "records") if r["path"] == "/v1/messages"]
    assert len(records) == 4
    ok = [r for r in records if r["status"] == 200]
    assert ok[1]["cached_tokens"] == ok[1]["predicted_cached"] > 100, ok[1]
    # issue 20: the session had sent all of that before (the ceiling), and who asked
    assert ok[1]["ceiling_tokens"] >= ok[1]["cached_tokens"], ok[1]
    assert ok[0]["ceiling_tokens"] == 0 and ok[1]["client"].startswith("python-httpx/")


def test_responses_previous_response_id_is_served_and_private(
    llama: EmbeddedServer, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    keys.write_text("alice\nmallory\n")
    proxy = start_proxy(tmp_path / "proxy", "--upstream", llama.url, "--api-key-file", str(keys))
    alice, mallory = {"Authorization": "Bearer alice"}, {"Authorization": "Bearer mallory"}
    try:
        first = httpx.post(proxy.url + "/v1/responses", headers=alice, timeout=300, json={
            "model": "m", "instructions": SYSTEM, "input": "Say hi.", "max_output_tokens": 8,
            "temperature": 0, "stream": True})  # fmt: skip
        assert first.status_code == 200, first.text
        done = sse_events(first.text)[-1]
        assert done[0] == "response.completed"
        rid = done[1]["response"]["id"]
        follow = {
            "model": "m",
            "instructions": SYSTEM,
            "previous_response_id": rid,
            "input": "And again.",
            "max_output_tokens": 8,
            "temperature": 0,
        }
        second = httpx.post(proxy.url + "/v1/responses", headers=alice, json=follow, timeout=300)
        assert second.status_code == 200, second.text
        assert second.json()["usage"]["input_tokens_details"]["cached_tokens"] > 100
        stolen = httpx.post(proxy.url + "/v1/responses", headers=mallory, json=follow,
                            timeout=300)  # fmt: skip
        assert stolen.status_code == 404, stolen.text
        assert httpx.get(f"{proxy.url}/v1/responses/{rid}", headers=mallory).status_code == 404
        got = httpx.get(f"{proxy.url}/v1/responses/{rid}", headers=alice)
        assert got.status_code == 200 and got.json()["id"] == rid
        stop_proxy(proxy)  # kept in the LMDB state (--keep-tapes lmdb): a restart keeps it
        proxy = start_proxy(tmp_path / "proxy", "--upstream", llama.url,
                            "--api-key-file", str(keys))  # fmt: skip
        assert httpx.get(f"{proxy.url}/v1/responses/{rid}", headers=alice).status_code == 200
        gone = httpx.delete(f"{proxy.url}/v1/responses/{rid}", headers=alice)
        assert gone.json()["deleted"] is True
        assert httpx.get(f"{proxy.url}/v1/responses/{rid}", headers=alice).status_code == 404
    finally:
        stop_proxy(proxy)


def test_the_real_sdks_read_kvproxys_answers(llama: EmbeddedServer, tmp_path: Path) -> None:
    """The ``anthropic`` and ``openai`` SDKs, as Claude Code's and Codex's own parsers
    would, read the events kvproxy writes: text, usage with the cached tokens."""
    import anthropic
    import openai

    proxy = start_proxy(tmp_path / "proxy", "--upstream", llama.url)
    try:
        claude = anthropic.Anthropic(base_url=proxy.url, api_key="x", max_retries=0)
        for turns in (1, 3):
            with (
                claude.messages.stream(
                    model="m",
                    max_tokens=8,
                    system=SYSTEM_BLOCKS,
                    tools=TOOLS,  # type: ignore[arg-type]
                    messages=ANTHROPIC_TURNS[:turns],
                ) as stream
            ):  # type: ignore[arg-type]
                message = stream.get_final_message()
        assert message.usage.cache_read_input_tokens and message.usage.cache_read_input_tokens > 100
        codex = openai.OpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=0)
        first = codex.responses.create(
            model="m", instructions=SYSTEM, input="hi", max_output_tokens=8, temperature=0
        )
        second = codex.responses.create(
            model="m",
            instructions=SYSTEM,
            input="again",
            previous_response_id=first.id,
            max_output_tokens=8,
            temperature=0,
            stream=True,
        )
        done = [e for e in second if e.type == "response.completed"]
        assert done and done[0].response.usage is not None
        assert done[0].response.usage.input_tokens_details.cached_tokens > 100
    finally:
        stop_proxy(proxy)
