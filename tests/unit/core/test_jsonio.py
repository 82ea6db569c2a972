"""``jsonio.dumps``: orjson's bytes where it encodes, the stdlib's where it refuses; either
way the upstream reads the same value."""

from __future__ import annotations

import json
from typing import Any

import pytest

from proxy.core.jsonio import dumps


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


CASES: list[tuple[str, Any]] = [
    ("chat body", {"messages": [{"role": "user", "content": "héllo ✓ 😀"}], "max_tokens": 4}),
    ("floats", {"temperature": 0.7, "small": 1e-7, "large": 1e16}),
    ("integer past 64 bits", {"seed": 2**70}),
    ("non-string keys", {1: "a", "b": [True, None]}),
    ("lone surrogate", {"content": "\ud800"}),
    ("nested past 254", nested(300)),
    ("tuple", {"ids": (1, 2, 3)}),
]


@pytest.mark.parametrize(("name", "value"), CASES, ids=[c[0] for c in CASES])
def test_the_bytes_decode_to_what_the_stdlib_encodes(name: str, value: Any) -> None:
    raw = dumps(value)
    assert isinstance(raw, bytes)
    assert json.loads(raw) == json.loads(json.dumps(value))


def test_a_plain_body_is_orjsons_compact_utf8() -> None:
    assert dumps({"a": "é", "b": [1, 2.5]}) == '{"a":"é","b":[1,2.5]}'.encode()
