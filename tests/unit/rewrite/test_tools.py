"""Stable tools: one order and one serialization per lineage (pure)."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import pytest

from proxy.core.conversation import thaw
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
    out, _, did = stable_tools(tools, previous)
    assert [t["function"]["name"] for t in out] == names and did is changed
    assert all(list(t) == sorted(t) for t in out)


def test_canonical_ignores_key_order_and_keeps_text() -> None:
    assert canonical(B_REORDERED) == canonical(B)
    assert canonical({"d": "é"}) == '{"d":"é"}'


def test_sort_keys_is_deep() -> None:
    assert list(sort_keys({"b": [{"z": 1, "a": 2}], "a": (1,)})) == ["a", "b"]
    assert list(sort_keys({"b": [{"z": 1, "a": 2}]})["b"][0]) == ["a", "z"]


@pytest.mark.parametrize(
    "value",
    [1, 1.0, True, None, float("nan"), float("inf"), 1e16, 2**64, "é\u2028\n\x01", [1, (2.5, None)],
     {"z": 1, "a": {"y": [], "b": "x"}}, MappingProxyType({"k": (1, MappingProxyType({"j": 0}))})],
)  # fmt: skip
def test_a_tool_goes_upstream_with_exactly_its_values_keys_sorted(value: Any) -> None:
    """Own time: orjson writes the canonical form and the sorted tool is read back from it;
    the tool sent is still the client's, value for value (1, 1.0, true, NaN and null kept
    apart), and a tool's canonical form does not change between requests."""
    sent = tool("t", extra=value)
    (out,), order, _ = stable_tools([MappingProxyType(sent)], [])
    assert repr(out) == repr(sort_keys(thaw(sent))) and list(out) == sorted(out)
    assert order == [canonical(sent)] == [canonical(dict(sent))]
