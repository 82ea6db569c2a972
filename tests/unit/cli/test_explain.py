"""``kvproxy explain``: why a request missed, from the records alone (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.cli.explain import (
    ADVICE,
    compared_with,
    describe,
    explain,
    find,
    is_miss,
    prefill_ms_per_token,
)
from proxy.core.cause import CauseKind

RECORDS: list[dict[str, Any]] = [
    {"request_id": "a", "time": 1, "status": 200, "lineage": "L", "slot": "0/0"},
    {"request_id": "b", "time": 2, "status": 200, "slot": "0/1", "miss_cause": "cold",
     "upstream": "u", "prefill_ms": 100.0, "prefilled_tokens": 50},
    {"request_id": "c", "time": 3, "status": 502, "miss_cause": "cold", "upstream": "u",
     "prefill_ms": 100.0, "prefilled_tokens": 150},
    {"request_id": "d", "time": 4, "status": 200, "lineage": "L", "slot": "0/1"},
]  # fmt: skip


def test_every_cause_has_advice() -> None:
    assert set(ADVICE) == set(CauseKind.__args__)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("record", "text"),
    [({"miss_cause": "diverged", "miss_token": 7}, "diverged at token 7"),
     ({"miss_cause": "cold", "miss_token": None}, "cold"), ({}, "None")],
)  # fmt: skip
def test_describe(record: dict[str, Any], text: str) -> None:
    assert describe(record) == text


@pytest.mark.parametrize(
    ("record", "miss"),
    [({"miss_cause": "cold", "status": 200}, True), ({"miss_cause": "cold", "status": 502}, False),
     ({"status": 200}, False)],
)  # fmt: skip
def test_is_miss(record: dict[str, Any], miss: bool) -> None:
    assert is_miss(record) is miss


@pytest.mark.parametrize(
    ("request_id", "last_miss", "found"),
    [("c", False, "c"), ("zz", False, None), (None, True, "b"), (None, False, "d")],
)
def test_find(request_id: str | None, last_miss: bool, found: str | None) -> None:
    record = find(RECORDS, request_id, last_miss)
    assert (record or {}).get("request_id") == found
    assert find([], None, False) is None


def test_compared_with_the_lineage_first_then_the_slot() -> None:
    assert compared_with(RECORDS, RECORDS[3])["request_id"] == "a"  # type: ignore[index]
    assert compared_with(RECORDS, {"time": 5, "slot": "0/1"})["request_id"] == "d"  # type: ignore[index]
    assert compared_with(RECORDS, RECORDS[0]) is None


def test_prefill_rate_per_upstream() -> None:
    assert prefill_ms_per_token(RECORDS, "u") == 1.0
    assert prefill_ms_per_token(RECORDS, "other") is None


def test_explain_a_miss() -> None:
    record = {**RECORDS[1], "prompt_tokens": 60, "cached_tokens": 10, "miss_token": 10,
              "miss_reason": "why not", "rewrite": ["tools"], "rewrite_saved": 3}  # fmt: skip
    text = explain(RECORDS, record)
    assert "result       MISS: cold at token 10" in text
    assert ADVICE["cold"] in text and "reason       why not" in text
    assert "cost         50 tokens prefilled" in text
    assert "rewrite      applied: tools" in text and "saved 3 tokens" in text
    assert "not logged" in text


def test_explain_a_hit_with_snippets() -> None:
    text = explain(RECORDS, {**RECORDS[3], "snippets": {"system": "You are"}})
    assert "result       HIT" in text and "compared to  a" in text
    assert "system text  'You are'" in text and "not logged" not in text
