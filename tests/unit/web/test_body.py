"""The request body's decoder: orjson where it accepts, and every refusal (or stdlib
extension) decided by the stdlib exactly as before (``decode_stdlib``)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from proxy.core.errors import BadRequest
from proxy.web.body import decode_json, decode_stdlib

DEEP = b'{"messages":' + b"[" * 5000 + b"]" * 5000 + b"}"
CASES: list[tuple[str, bytes, Any]] = [
    # (name, body, the value decoded, or the start of the 400's message)
    ("object", b'{"messages":[{"role":"user","content":"hi"}]}', None),
    ("pair surrogate", b'{"a":"\\ud83d\\ude00"}', None),
    ("non-ascii", '{"a":"héllo ✓"}'.encode(), None),
    ("floats and ints", b'{"t":0.7,"n":-12,"big":18446744073709551615,"e":1e-7}', None),
    ("duplicate keys", b'{"a":1,"a":2}', None),
    ("not json", b"{oops", "request body is not valid JSON: Expecting property name"),
    ("truncated", b"[1,2", "request body is not valid JSON: Expecting ',' delimiter"),
    ("bad utf-8", b'"\xff"', "request body is not valid JSON: 'utf-8' codec"),
    ("lone high surrogate", b'{"a":"\\ud800"}', "request body holds a lone UTF-16 surrogate"),
    ("lone low surrogate", b'{"a":"\\udc00x"}', "request body holds a lone UTF-16 surrogate"),
    ("high then text", b'{"a":"\\ud800\\u0041"}', "request body holds a lone UTF-16 surrogate"),
    ("nested too deep", DEEP, "request body is nested too deeply"),
    ("nan (stdlib extension)", b'{"a":NaN}', None),
    ("infinity (overflow)", b'{"a":1e400}', None),
    ("byte order mark", b'\xef\xbb\xbf{"a":1}', None),
]


def outcome(decode: Any, raw: bytes) -> tuple[str, Any]:
    try:
        return "value", decode(raw)
    except BadRequest as exc:
        return "error", exc.message


def same(a: Any, b: Any) -> bool:
    """Equal, NaN included."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(same, a, b))
    return type(a) is type(b) and a == b


@pytest.mark.parametrize(("name", "raw", "expected"), CASES, ids=[c[0] for c in CASES])
def test_decoding_is_the_stdlibs_outcome(name: str, raw: bytes, expected: Any) -> None:
    kind, got = outcome(decode_json, raw)
    assert (kind, got) == outcome(decode_stdlib, raw) or same(got, decode_stdlib(raw))
    if isinstance(expected, str):
        assert kind == "error" and got.startswith(expected), got
    else:
        assert kind == "value" and same(got, json.loads(raw))


def test_an_invalid_bodys_message_is_the_stdlibs() -> None:
    with pytest.raises(BadRequest) as exc:
        decode_json(b'{"a": tru}')
    try:
        json.loads(b'{"a": tru}')
    except ValueError as stdlib:
        assert exc.value.message == f"request body is not valid JSON: {stdlib}"
