"""ollama /api/chat: options and format become canonical params, and come back."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.core.errors import BadRequest
from proxy.dialects.ollama_chat import DIALECT as OLLAMA_CHAT
from tests.unit.dialects.cases import TOOL, check_rejected, check_round_trip


def test_round_trip_keeps_every_field() -> None:
    check_round_trip(
        OLLAMA_CHAT,
        {
            "model": "smollm2",
            "messages": [
                {"role": "user", "content": "look", "images": ["iVBORw0KGgo="]},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [{"function": {"name": "read_file", "arguments": {"path": "a"}}}],
                },
                {"role": "tool", "content": "data", "tool_name": "read_file"},
            ],
            "tools": [TOOL],
            "stream": False,
            "format": "json",
            "options": {"temperature": 0.1, "num_predict": 8, "num_ctx": 4096, "seed": 3},
            "keep_alive": "5m",
            "think": False,
        },
    )


def test_ollama_options_become_canonical_params() -> None:
    conv = OLLAMA_CHAT.parse(
        {
            "model": "m",
            "messages": [],
            "format": "json",
            "options": {"num_predict": 8, "temperature": 0.5, "num_ctx": 2048},
        }
    )
    assert dict(conv.params) == {
        "max_tokens": 8,
        "temperature": 0.5,
        "response_format": {"type": "json_object"},
    }
    assert conv.extra["options"] == {"num_ctx": 2048}
    assert conv.stream is True


BAD_BODIES: list[tuple[str, Any, str]] = [
    ("ollama missing messages", {"model": "m"}, "'messages' is required"),
    ("ollama options not object", {"messages": [], "options": 3}, "'options'"),
    ("ollama bad format", {"messages": [], "format": 7}, "'format'"),
]


@pytest.mark.parametrize(("name", "body", "says"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_bad_bodies_are_rejected_with_a_reason(name: str, body: Any, says: str) -> None:
    check_rejected(OLLAMA_CHAT, body, says)


def test_error_bodies_follow_the_dialect() -> None:
    assert OLLAMA_CHAT.error_body(BadRequest("boom")) == {"error": "boom"}
