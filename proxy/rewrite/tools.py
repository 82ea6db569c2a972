"""Stable tools: one order and one serialization per lineage."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import orjson

from proxy.core.conversation import thaw


def canonical(tool: Mapping[str, Any]) -> str:
    """The tool's JSON, keys sorted, compact: its identity in a lineage. orjson writes it
    (an agent sends tens of tools with long schemas on every request); a tool it refuses,
    or whose JSON holds ``null`` (orjson writes NaN as null too), is written by the stdlib."""
    data = quick(tool)
    return data.decode() if data is not None else slow(tool)


def slow(tool: Mapping[str, Any]) -> str:
    return json.dumps(thaw(tool), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def quick(tool: Mapping[str, Any]) -> bytes | None:
    try:
        data = orjson.dumps(tool, default=_plain, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return None
    return None if b"null" in data else data


def _plain(value: Any) -> Any:
    if isinstance(value, MappingProxyType | Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def sort_keys(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: sort_keys(value[k]) for k in sorted(value)}
    if isinstance(value, list | tuple):
        return [sort_keys(v) for v in value]
    return value


def stable_tools(
    tools: Sequence[Mapping[str, Any]], previous: Sequence[str]
) -> tuple[list[dict[str, Any]], list[str], bool]:
    """Tools in the lineage's earlier order (new ones appended, removed ones left out), keys
    sorted; their canonical forms; and whether that differs from what the client sent.
    A tool orjson wrote is read back from its canonical JSON (the same values: no NaN, no
    integer past 64 bits) instead of copied key by key."""
    keys, sortings = [], {}
    for tool in tools:
        data = quick(tool)
        key = data.decode() if data is not None else slow(tool)
        keys.append(key)
        sortings[key] = (tool, data is not None)
    known = set(previous)
    order = [k for k in previous if k in sortings] + [k for k in sortings if k not in known]
    out = [orjson.loads(k) if fast else sort_keys(thaw(tool))
           for k, (tool, fast) in ((k, sortings[k]) for k in order)]  # fmt: skip
    return out, order, keys != order
