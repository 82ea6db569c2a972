"""The relays' pure parts: framings, the upstream's error message in the client's own
protocol, and which answers are streams or plain JSON."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request

from proxy.dialects import REGISTRY
from proxy.dialects.anthropic_messages import DIALECT as ANTHROPIC
from proxy.dialects.bridged import typed_events
from proxy.dialects.ollama_chat import DIALECT as OLLAMA_CHAT
from proxy.dialects.openai_chat import DIALECT as OPENAI_CHAT
from proxy.dialects.openai_responses import DIALECT as RESPONSES
from proxy.web.relay import (
    RELAYS,
    client_headers,
    error_for,
    is_stream,
    ndjson,
    plain_json,
    sse,
    upstream_error_message,
)

OBJECTS = [{"type": "message_start", "a": "é"}, {"b": 1}]


def test_framings() -> None:
    assert ndjson(OBJECTS) == [b'{"type":"message_start","a":"\\u00e9"}\n', b'{"b":1}\n']
    assert sse([{"b": 1}]) == [b'data: {"b":1}\n\n']
    assert typed_events(OBJECTS) == [
        'event: message_start\ndata: {"type":"message_start","a":"é"}\n\n'.encode(),
        b'event: message\ndata: {"b":1}\n\n',
    ]


@pytest.mark.parametrize(
    ("dialect", "status", "expected"),
    [
        (OPENAI_CHAT, 503, {"error": {"message": "down", "type": "upstream_error", "code": 503}}),
        (OPENAI_CHAT, None, {"error": {"message": "down", "type": "upstream_error", "code": 502}}),
        (OLLAMA_CHAT, 500, {"error": "down"}),
        (ANTHROPIC, 500, {"type": "error", "error": {"type": "api_error", "message": "down"}}),
        (RESPONSES, None, {"type": "error", "code": "upstream_error", "message": "down",
                           "param": None}),  # the event that ends a Responses stream
    ],
)  # fmt: skip
def test_error_for_speaks_the_clients_protocol(dialect: Any, status: int | None,
                                               expected: dict[str, Any]) -> None:  # fmt: skip
    assert error_for(dialect)("down", status) == expected


def test_a_whole_responses_error_is_its_error_body() -> None:
    body = error_for(RESPONSES)("down", 502)
    assert json.dumps(body) and body != error_for(RESPONSES)("down", None)


@pytest.mark.parametrize(
    ("raw", "message"),
    [(b'{"error": {"message": "bad", "code": 400}}', "bad"), (b'{"error": "gone"}', "gone"),
     (b"plain text", "plain text"), (b"\xff" * 600, "\ufffd" * 500),
     (b"", "upstream error"), (b'{"detail": "x"}', "{'detail': 'x'}")],
)  # fmt: skip
def test_upstream_error_message(raw: bytes, message: str) -> None:
    assert upstream_error_message(raw) == message


@pytest.mark.parametrize(
    ("content_type", "encoding", "stream", "plain"),
    [("text/event-stream", None, True, False), ("application/x-ndjson", None, True, False),
     ("application/json", None, False, True), ("application/problem+json", None, False, True),
     ("application/json", "gzip", False, False), ("text/html", None, False, False)],
)  # fmt: skip
def test_stream_and_plain_json(content_type: str, encoding: str | None, stream: bool,
                               plain: bool) -> None:  # fmt: skip
    headers = {} if encoding is None else {"Content-Encoding": encoding}
    resp = SimpleNamespace(content_type=content_type, headers=headers)
    assert is_stream(resp) is stream and plain_json(resp) is plain  # type: ignore[arg-type]


def test_client_headers_drop_what_a_reencoded_body_changes() -> None:
    request = make_mocked_request("POST", "/v1/chat/completions", headers={
        "Content-Type": "application/json", "Content-Length": "9", "Accept-Encoding": "gzip",
        "Expect": "100-continue", "Connection": "close", "X-Session-Id": "s"})  # fmt: skip
    assert client_headers(request) == {"X-Session-Id": "s"}


def test_every_dialect_family_has_a_relay() -> None:
    assert len(RELAYS) == 5 and all(callable(r) for r in RELAYS.values())
    assert {d.family for d in REGISTRY.values()} <= {"openai", "ollama", "llamacpp",
                                                     "anthropic", "responses"}  # fmt: skip
