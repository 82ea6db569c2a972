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
