"""OpenAI chat: bodies round-trip field for field; bad ones are refused with a reason."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.core.errors import BadRequest
from proxy.dialects.openai_chat import DIALECT as OPENAI_CHAT
from tests.unit.dialects.cases import TOOL, check_rejected, check_round_trip

ROUND_TRIPS: list[tuple[str, dict[str, Any]]] = [
    ("openai plain", {"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
    (
        "openai tools and tool calls",
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "read a.txt"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "read_file", "arguments": '{"path":"a.txt"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "hello"},
            ],
            "tools": [TOOL],
            "tool_choice": "auto",
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_completion_tokens": 64,
        },
    ),
    (
        "openai multimodal content parts",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    ],
                }
            ],
            "temperature": 0.2,
        },
    ),
    (
        "openai unknown fields kept",
        {
            "messages": [{"role": "user", "content": "x", "name": "bob", "x-custom": [1, 2]}],
            "cache_prompt": True,
            "id_slot": 1,
            "some_future_field": {"nested": True},
        },
    ),
]


@pytest.mark.parametrize(("name", "body"), ROUND_TRIPS, ids=[r[0] for r in ROUND_TRIPS])
def test_round_trip_keeps_every_field(name: str, body: dict[str, Any]) -> None:
    check_round_trip(OPENAI_CHAT, body)


BAD_BODIES: list[tuple[str, Any, str]] = [
    ("not an object", [1, 2], "JSON object"),
    ("missing messages", {"model": "m"}, "'messages' is required"),
    ("messages not a list", {"messages": "hi"}, "must be an array"),
    ("message without role", {"messages": [{"content": "x"}]}, "role"),
    ("content a number", {"messages": [{"role": "user", "content": 5}]}, "content"),
    ("stream not bool", {"messages": [], "stream": "yes"}, "'stream'"),
    ("tools not a list", {"messages": [], "tools": {"a": 1}}, "'tools'"),
    ("model not a string", {"messages": [], "model": 3}, "'model'"),
]


@pytest.mark.parametrize(("name", "body", "says"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_bad_bodies_are_rejected_with_a_reason(name: str, body: Any, says: str) -> None:
    check_rejected(OPENAI_CHAT, body, says)


def test_error_bodies_follow_the_dialect() -> None:
    expected = {"error": {"message": "boom", "type": "invalid_request_error", "code": 400}}
    assert OPENAI_CHAT.error_body(BadRequest("boom")) == expected


def test_stream_defaults_off_and_the_rest_are_params() -> None:
    conv = OPENAI_CHAT.parse({"messages": [], "temperature": 0.5, "id_slot": 1})
    assert conv.kind == "chat" and conv.stream is False and conv.model is None
    assert dict(conv.params) == {"temperature": 0.5, "id_slot": 1}
