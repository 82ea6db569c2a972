"""The director runs one request's phases with fake slots and no sockets: what goes
upstream, what the record says, what the slot and the tape keep."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from proxy.config.settings import Settings
from proxy.core.conversation import Conversation, MessageMemo
from proxy.core.errors import BadRequest, Overloaded, ProxyError
from proxy.core.limits import BodyBudget
from proxy.dialects import REGISTRY
from proxy.flow.director import CACHE_HEADER, REQUEST_ID_HEADER, Director, Exchange
from proxy.rewrite.engine import RewriteConfig, Rewriter
from proxy.rewrite.tape import TapeStore
from proxy.slots.manager import SlotManager
from proxy.slots.routing import RoutePolicy
from proxy.slots.servers import ServerSlots
from proxy.tokens.base import Partial

CHAT = REGISTRY["/v1/chat/completions"]
SYSTEM = "You are a careful agent.\n" * 40


class CharTokenizer:
    """One token per character of the body's messages: routing, not tokenizing, is tested."""

    exact = True
    user_marker: tuple[int, ...] = ()

    async def prompt_tokens(self, conv: Conversation, body: dict[str, Any]) -> list[int]:
        return [ord(c) % 997 for c in json.dumps(body.get("messages"))]

    def text_tokens(self, text: str) -> list[int]:
        return [ord(c) % 997 for c in text]


class FakeUpstream:
    def __init__(self, kind: str) -> None:
        self.kind, self.url, self.name = kind, f"http://{kind}", kind

    async def get_json(self, path: str) -> Any:
        raise ProxyError("no server here")


class Gate:
    """The lifecycle's part: refuses once ``draining``."""

    draining = False

    def check(self) -> None:
        if self.draining:
            raise Overloaded("shutting down")

    @contextlib.contextmanager
    def queue(self) -> Iterator[None]:
        yield


class HeadTokenizer(CharTokenizer):
    """``CharTokenizer`` that remembers the last prompt it tokenized: an appended turn is
    known in part (``LocalTokenizer.appended_head``), its head what it shares with that
    prompt; its rest (a worker thread's part) waits for ``go``."""

    def __init__(self) -> None:
        self.last: list[int] = []
        self.go = threading.Event()

    async def prompt_tokens(self, conv: Conversation, body: dict[str, Any]) -> list[int]:
        self.last = await super().prompt_tokens(conv, body)
        return self.last

    async def appended_head(self, conv: Conversation, body: dict[str, Any]) -> Partial | None:
        whole = await super().prompt_tokens(conv, body)
        n = next((i for i, (a, b) in enumerate(zip(self.last, whole, strict=False)) if a != b),
                 min(len(self.last), len(whole)))  # fmt: skip
        if n == 0:
            return None

        def rest() -> list[int]:
            assert self.go.wait(10)
            self.last = whole
            return whole

        return Partial(whole[:n], rest, len(whole) - n)


def director(kind: str = "llama", tokenizer: CharTokenizer | None = None
             ) -> tuple[Director, list[dict[str, Any]], Gate]:  # fmt: skip
    server = ServerSlots(0, FakeUpstream(kind), tokenizer or CharTokenizer(),  # type: ignore[arg-type]
                         2 if kind == "llama" else 1, 100_000, can_save=False)  # fmt: skip
    slots = SlotManager([server], RoutePolicy(), 1 << 30)
    records: list[dict[str, Any]] = []
    gate = Gate()
    made = Director(slots, Rewriter(RewriteConfig(), TapeStore()), MessageMemo(), Settings(),
                    records.append, gate)  # fmt: skip
    return made, records, gate


def body(*turns: str) -> dict[str, Any]:
    messages = [{"role": "system", "content": SYSTEM}]
    for i, text in enumerate(turns):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
    return {"messages": messages, "max_tokens": 8}


async def turn(d: Director, payload: Any, reply: str = "Hello!") -> Exchange:
    ex = d.admit(CHAT, "/v1/chat/completions", BodyBudget(1 << 30).hold())
    try:
        await d.prepare(ex, payload, {"x-session-id": "s1"}, "/v1/chat/completions")
        ex.rec.status = 200  # the relay's part: the upstream answered
        ex.observer.observe({"choices": [{"message": {"content": reply},
                                          "finish_reason": "stop"}]})  # fmt: skip
        d.settle(ex)
    finally:
        d.close(ex)
    return ex


async def test_a_chat_turn_is_pinned_recorded_and_kept() -> None:
    d, records, _ = director()
    ex = await turn(d, body("hi"))
    assert ex.call is not None and ex.call.path == "/v1/chat/completions"
    assert ex.call.body["id_slot"] == ex.lease.route.slot and ex.call.body["cache_prompt"]
    assert ex.headers[REQUEST_ID_HEADER] == records[0]["request_id"]
    assert ex.headers[CACHE_HEADER].startswith("cached=0;")
    assert records[0]["status"] == 200 and records[0]["route_reason"] == "empty"
    assert len(d.rewriter.tapes) == 1
    assert not any(state.busy for state in d.slots.servers[0].table.states)


async def test_the_next_turn_goes_where_its_prefix_is() -> None:
    d, records, _ = director()
    first = await turn(d, body("hi"))
    second = await turn(d, body("hi", "Hello!", "and now?"))
    assert second.lease.route.slot == first.lease.route.slot
    assert second.lease.route.predicted > len(SYSTEM)
    assert records[1]["route_reason"] == "prefix-hit"


async def test_a_malformed_body_is_a_400_with_a_record() -> None:
    d, records, _ = director()
    with pytest.raises(BadRequest):
        await turn(d, {"messages": "not a list"})
    assert len(records) == 1 and records[0]["dialect"] == CHAT.name


async def test_nothing_starts_once_draining_and_the_slot_is_given_back() -> None:
    d, records, gate = director()
    gate.draining = True
    with pytest.raises(ProxyError):
        await turn(d, body("hi"))
    assert not any(state.busy for state in d.slots.servers[0].table.states)
    assert len(records) == 1 and len(d.rewriter.tapes) == 0


async def test_an_openai_request_to_ollama_goes_to_its_chat_api_unpinned() -> None:
    d, _, _ = director("ollama")
    ex = await turn(d, body("hi"))
    assert ex.call is not None and ex.call.path == "/api/chat"
    assert "id_slot" not in ex.call.body and "keep_alive" in ex.call.body


async def test_slots_are_read_from_the_moment_a_request_is_admitted() -> None:
    """The /slots reading that routes a request starts when it is admitted, before its
    body is read: the server answers while the body arrives and is decoded, so the route
    does not wait for it (``SlotManager.look_ahead``)."""
    d, _, _ = director()
    server = d.slots.servers[0]
    ex = d.admit(CHAT, "/v1/chat/completions", BodyBudget(1 << 30).hold())
    try:
        assert ex.ticket == 1 and server.read_for == 1 and server.sync_task is not None
    finally:
        d.close(ex)
        if server.sync_task is not None:
            await asyncio.gather(server.sync_task, return_exceptions=True)


async def test_the_slots_request_goes_out_before_the_body_is_parsed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Planning an appended turn never waits, so the /slots reading ``admit`` started would
    send its request only when routing waits for the answer: ``prepare`` gives it the loop
    first, and the server answers while the body is parsed and tokenized."""
    d, _, _ = director()
    seen: list[str] = []

    async def get_json(path: str) -> Any:
        seen.append(f"GET {path}")
        raise ProxyError("no server here")

    parse = type(CHAT).parse

    def parsed(self: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append("parse")
        return parse(self, *args, **kwargs)

    monkeypatch.setattr(d.slots.servers[0].upstream, "get_json", get_json)
    monkeypatch.setattr(type(CHAT), "parse", parsed)
    await turn(d, body("hi"))
    assert seen[:2] == ["GET /slots", "parse"], seen


async def test_an_appended_turn_goes_upstream_before_its_new_text_is_tokenized() -> None:
    """An appended turn whose head (the remembered chunks) decides its route is routed on
    the head and sent; its new text is tokenized while the upstream has it, and the
    prediction, the cache header and the record are then those of routing on the whole
    prompt (docs/tokens.md)."""
    reference, seen, _ = director()
    await turn(reference, body("hi"))
    expected = await turn(reference, body("hi", "Hello!", "and now?"))
    tokenizer = HeadTokenizer()
    d, records, _ = director(tokenizer=tokenizer)
    await turn(d, body("hi"))
    ex = d.admit(CHAT, "/v1/chat/completions", BodyBudget(1 << 30).hold())
    try:
        second = body("hi", "Hello!", "and now?")
        await d.prepare(ex, second, {"x-session-id": "s1"}, "/v1/chat/completions")
        assert ex.call is not None and ex.lease is not None and ex.finishing is not None
        assert not ex.finishing.done() and ex.rec.overhead_ms is not None
        tokenizer.go.set()
        await d.prompt_known(ex)
        whole = await CharTokenizer().prompt_tokens(Conversation(kind="chat"), second)
        assert ex.lease.prompt is not None and list(ex.lease.prompt.tokens) == whole
        assert ex.lease.route == expected.lease.route
        assert ex.headers[CACHE_HEADER] == expected.headers[CACHE_HEADER]
        ex.rec.status = 200
        ex.observer.observe({"choices": [{"message": {"content": "ok"},
                                          "finish_reason": "stop"}]})  # fmt: skip
        d.settle(ex)
    finally:
        d.close(ex)
    assert records[1]["predicted_cached"] == expected.lease.route.predicted
    assert records[1]["route_reason"] == "prefix-hit" and records[1]["tail_ms"] is not None
    held = d.slots.servers[0].table.held.get(ex.lease.route.slot)
    assert held is not None and list(held.tokens[: len(whole)]) == whole
    assert records[1]["ceiling_tokens"] == seen[1]["ceiling_tokens"] > 0


async def test_a_head_the_slot_does_not_hold_is_tokenized_whole_before_routing() -> None:
    """Where the slot does not hold all of the head, the tail could change the route: the
    whole prompt is tokenized before the request is routed on and sent."""
    tokenizer = HeadTokenizer()
    d, records, _ = director(tokenizer=tokenizer)
    await turn(d, body("hi"))
    tokenizer.last = await CharTokenizer().prompt_tokens(
        Conversation(kind="chat"), body("hi", "Hello! Something else", "x")
    )
    tokenizer.go.set()
    ex = await turn(d, body("hi", "Hello!", "and now?"))
    assert ex.finishing is None and ex.partial is None and ex.lease is not None
    assert ex.lease.prompt is not None and list(ex.lease.prompt.tokens) == tokenizer.last
    assert records[1]["tail_ms"] is None and records[1]["predicted_cached"] > len(SYSTEM)


CALLED = {"id": "c1", "type": "function", "function": {"name": "run", "arguments": "{}"}}
UNCHANGED = [
    ("/v1/chat/completions", {"messages": [
        {"role": "system", "content": SYSTEM + "Today is 2026-12-06."},
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": None, "tool_calls": [CALLED]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
        {"role": "user", "content": "go on"}],
        "tools": [{"type": "function", "function": {"name": "run", "parameters": {}}}]}),
    ("/v1/responses", {"instructions": SYSTEM, "input": [
        {"type": "message", "role": "assistant", "tool_calls": [CALLED],
         "content": [{"type": "output_text", "text": "a"}]},
        {"type": "function_call", "call_id": "c2", "name": "run", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c2", "output": "ok"},
        {"role": "user", "content": "go on"}]}),
    ("/v1/messages", {"system": SYSTEM, "max_tokens": 8, "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "run",
                                           "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                                      "content": "ok"}]}]}),
    ("/api/chat", {"model": "m", "messages": [{"role": "system", "content": SYSTEM},
                                             {"role": "user", "content": "hi"}]}),
]  # fmt: skip


@pytest.mark.parametrize(("path", "payload"), UNCHANGED, ids=[u[0] for u in UNCHANGED])
async def test_a_request_leaves_its_decoded_body_as_it_came(
    path: str, payload: dict[str, Any]
) -> None:
    """The memo hands a body's decoded messages to the next turn's body
    (``MessageMemo.decode``): nothing on the request path may change them in place."""
    d, _, _ = director()
    before = json.dumps(payload, sort_keys=True)
    for _ in range(2):
        ex = d.admit(REGISTRY[path], path, BodyBudget(1 << 30).hold())
        try:
            await d.prepare(ex, payload, {"x-session-id": "s1"}, path)
            ex.rec.status = 200
            d.settle(ex)
        finally:
            d.close(ex)
        assert json.dumps(payload, sort_keys=True) == before
