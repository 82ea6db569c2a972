"""Stable tools: one order and one serialization per lineage (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.rewrite.tools import canonical, sort_keys, stable_tools


def tool(name: str, **extra: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": {}}, **extra}


A, B, C = tool("a"), tool("b"), tool("c")
B_REORDERED = {"function": {"parameters": {}, "name": "b"}, "type": "function"}


@pytest.mark.parametrize(
    ("tools", "previous", "names", "changed"),
    [
        ([A, B], [], ["a", "b"], False),  # first time: as sent
        ([A, B], [canonical(A), canonical(B)], ["a", "b"], False),
        ([B, A], [canonical(A), canonical(B)], ["a", "b"], True),  # the first order kept
        ([B, C], [canonical(A), canonical(B)], ["b", "c"], False),  # removed left out
        ([C, B], [canonical(B)], ["b", "c"], True),  # a new one appended
        ([B_REORDERED], [], ["b"], False),  # keys sorted; key order alone is no change
    ],
)
def test_stable_tools(tools: list[dict[str, Any]], previous: list[str], names: list[str],
                      changed: bool) -> None:  # fmt: skip
    out, did = stable_tools(tools, previous)
    assert [t["function"]["name"] for t in out] == names and did is changed
    assert all(list(t) == sorted(t) for t in out)


def test_canonical_ignores_key_order_and_keeps_text() -> None:
    assert canonical(B_REORDERED) == canonical(B)
    assert canonical({"d": "é"}) == '{"d":"é"}'


def test_sort_keys_is_deep() -> None:
    assert list(sort_keys({"b": [{"z": 1, "a": 2}], "a": (1,)})) == ["a", "b"]
    assert list(sort_keys({"b": [{"z": 1, "a": 2}]})["b"][0]) == ["a", "z"]
