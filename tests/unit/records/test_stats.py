"""``kvproxy stats``: the summary of records (pure), then its text."""

from __future__ import annotations

import pytest

from proxy.records.stats import Totals, parse_since, render, summarize


def rec(i: int, **extra: object) -> dict[str, object]:
    return {"time": 1_000_000 + i, "request_id": f"r{i}", "status": 200, **extra}


def test_summary_hit_rate_agreement_and_causes() -> None:
    records = [
        rec(1, prompt_tokens=1000, cached_tokens=0, predicted_cached=0, prefilled_tokens=1000,
            prefill_ms=2000.0, slot="0/0", miss_cause="cold"),
        rec(2, prompt_tokens=1100, cached_tokens=1000, predicted_cached=1000,
            prefilled_tokens=100, prefill_ms=200.0, slot="0/0"),
        rec(3, prompt_tokens=1100, cached_tokens=500, predicted_cached=1000,
            prefilled_tokens=600, prefill_ms=1200.0, slot="0/1",
            miss_cause="diverged", miss_token=500),
        rec(4, status=502),
    ]  # fmt: skip
    total, per_slot = summarize(records)
    assert total.requests == 3
    assert total.hit_rate == 1500 / 3200
    assert (total.compared, total.exact, total.abs_error) == (3, 2, 500)
    assert dict(total.causes) == {"cold": 1, "diverged": 1}
    assert total.seconds_saved == 1500 * (3400 / 1700) / 1000
    assert set(per_slot) == {"0/0", "0/1"}
    text = render(total, per_slot)
    assert "hit rate by tokens 46.9%" in text and "2/3 requests" in text


def test_parse_since() -> None:
    assert parse_since("2h", now=10_000.0) == 10_000.0 - 7200
    assert parse_since("1700000000") == 1_700_000_000.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [("30s", 970.0), ("30m", 1000.0 - 1800), ("1.5h", 1000.0 - 5400), ("1d", 1000.0 - 86400),
     (" 2m ", 880.0), ("1234.5", 1234.5)],
)  # fmt: skip
def test_parse_since_table(text: str, expected: float) -> None:
    assert parse_since(text, now=1000.0) == expected


@pytest.mark.parametrize("text", ["yesterday", "5w", "m5", ""])
def test_parse_since_says_what_it_takes(text: str) -> None:
    with pytest.raises(ValueError, match="--since takes 30m, 2h, 1d or a Unix time"):
        parse_since(text, now=0.0)


@pytest.mark.parametrize(
    ("record", "compared"),
    [({"predicted_cached": 5, "cached_tokens": 5}, 1),
     ({"predicted_cached": 5, "cached_tokens": 5, "estimated": True}, 0),  # ollama: a guess
     ({"predicted_cached": None, "cached_tokens": 5}, 0),
     ({"predicted_cached": 5}, 0)],
)  # fmt: skip
def test_only_exact_predictions_are_compared(record: dict[str, object], compared: int) -> None:
    totals = Totals()
    totals.add(record)
    assert totals.compared == compared


def test_failed_requests_are_left_out_and_a_slotless_one_counts_as_dash() -> None:
    total, per_slot = summarize([rec(1, status=500), rec(2, status=None, prompt_tokens=3),
                                 rec(3, status=429)])  # fmt: skip
    assert total.requests == 1 and set(per_slot) == {"-"}


def test_empty_totals() -> None:
    assert (Totals().hit_rate, Totals().seconds_saved) == (0.0, 0.0)
    assert render(*summarize([])) == "no records"


def test_the_ceiling_share_and_the_prefill_lost_by_cause_per_client() -> None:
    records = [
        {"status": 200, "client": "claude-cli/2.1.328", "prompt_tokens": 1000,
         "cached_tokens": 900, "ceiling_tokens": 900, "prefilled_tokens": 100,
         "prefill_ms": 1000.0},
        {"status": 200, "client": "claude-cli/2.1.328", "prompt_tokens": 1000,
         "cached_tokens": 0, "ceiling_tokens": 950, "prefilled_tokens": 1000,
         "prefill_ms": 10000.0, "miss_cause": "evicted"},
        {"status": 200, "client": "codex_exec/0.169.0", "prompt_tokens": 500,
         "cached_tokens": 0, "ceiling_tokens": 0, "prefilled_tokens": 500, "prefill_ms": 50.0,
         "miss_cause": "cold"},
    ]  # fmt: skip
    total, clients = summarize(records, by="client")
    assert total.ceiling == 1850
    assert total.ceiling_share == pytest.approx(900 / 1850)
    assert dict(total.lost_ms) == {"evicted": pytest.approx(9500.0)}  # 950 tokens at 10 ms
    assert clients["claude-cli/2.1.328"].ceiling_share == pytest.approx(900 / 1850)
    assert clients["codex_exec/0.169.0"].ceiling_share == 1.0  # nothing could be reused
    text = render(total, clients, by="client")
    assert "evicted 9.5 s" in text and "codex_exec/0.169.0" in text
