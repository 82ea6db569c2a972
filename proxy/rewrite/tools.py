"""Stable tools: one order and one serialization per lineage."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from proxy.core.conversation import thaw


def canonical(tool: Mapping[str, Any]) -> str:
    return json.dumps(thaw(tool), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sort_keys(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: sort_keys(value[k]) for k in sorted(value)}
    if isinstance(value, list | tuple):
        return [sort_keys(v) for v in value]
    return value


def stable_tools(
    tools: Sequence[Mapping[str, Any]], previous: Sequence[str]
) -> tuple[list[dict[str, Any]], bool]:
    """Tools in the lineage's earlier order (new ones appended, removed ones left out), keys
    sorted; and whether that differs from what the client sent."""
    keyed = {canonical(t): t for t in tools}
    order = [k for k in previous if k in keyed] + [k for k in keyed if k not in previous]
    out = [sort_keys(thaw(keyed[k])) for k in order]
    changed = [canonical(t) for t in tools] != order or out != [thaw(t) for t in tools]
    return out, changed
