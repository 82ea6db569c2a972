"""Checks every dialect's tests share: a body parses and renders back to itself, and a bad
body is refused with a reason."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.core.errors import BadRequest

TOOL = {
    "type": "function",
    "function": {
        "name": "read_file",
        "description": "Read a file",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}}},
    },
}


def check_round_trip(dialect: Any, body: dict[str, Any]) -> None:
    """Every field comes back; only ``stream`` is filled in with the dialect's default."""
    rendered = dialect.render(dialect.parse(body))
    default_stream = dialect.family == "ollama"
    assert rendered == {**body, "stream": body.get("stream", default_stream)}


def check_rejected(dialect: Any, body: Any, says: str) -> None:
    with pytest.raises(BadRequest) as info:
        dialect.parse(body)
    assert says in info.value.message


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None,
          **top: Any) -> dict[str, Any]:  # fmt: skip
    """One streamed chat-completions chunk, as llama-server sends it."""
    return {"choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}], **top}


def call_chunk(arguments: str, call_id: str = "c1", name: str = "f") -> dict[str, Any]:
    """The chunk that opens a streamed tool call."""
    call = {"index": 0, "id": call_id, "type": "function",
            "function": {"name": name, "arguments": arguments}}  # fmt: skip
    return chunk({"tool_calls": [call]})
