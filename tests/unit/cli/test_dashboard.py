"""``kvproxy dashboard``: request_done events read from the log, summed, drawn (pure)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from rich.console import Console

from proxy.cli.dashboard import RECENT, SPARK, Dashboard, events, is_hit, render, sparkline


def test_only_request_done_events_are_read() -> None:
    done = {"event": "request_done", "request_id": "r"}
    lines = [json.dumps(done), "not json \"request_done\"", json.dumps({"event": "other"}),
             json.dumps({"event": "x", "note": "request_done"}), '["request_done"]']  # fmt: skip
    assert list(events(iter(lines))) == [done]


@pytest.mark.parametrize(
    ("values", "expected"),
    [([], ""), ([0.0], SPARK[0]), ([1.0, 2.0], SPARK[3] + SPARK[-1]), ([5.0, 5.0], SPARK[-1] * 2)],
)
def test_sparkline(values: list[float], expected: str) -> None:
    assert sparkline(values) == expected


@pytest.mark.parametrize(
    ("event", "hit"),
    [({"cached_tokens": 10}, True), ({"cached_tokens": 10, "miss_cause": "diverged"}, False),
     ({"cached_tokens": 0}, False), ({}, False)],
)  # fmt: skip
def test_is_hit(event: dict[str, Any], hit: bool) -> None:
    assert is_hit(event) is hit


def test_the_board_sums_and_keeps_the_recent() -> None:
    board = Dashboard()
    for i in range(RECENT + 5):
        board.add({"request_id": f"r{i}", "time": 100.0 + i, "prompt_tokens": 10,
                   "cached_tokens": 5, "prefilled_tokens": 5, "prefill_ms": 50.0,
                   "ttft_ms": 20.0, "slot": f"0/{i % 2}"})  # fmt: skip
    assert board.requests == RECENT + 5 and len(board.recent) == RECENT
    assert (board.prompt, board.cached) == (10 * (RECENT + 5), 5 * (RECENT + 5))
    assert board.seconds_saved == board.cached * 10 / 1000
    assert set(board.slots) == {"0/0", "0/1"}
    assert board.rate(now=100.0 + RECENT + 4, window=10.0) == 1.1
    assert Dashboard().seconds_saved == 0.0


def test_render_draws_the_board() -> None:
    board = Dashboard()
    board.add({"request_id": "abcdefghij", "time": 1.0, "dialect": "openai_chat", "slot": "0/0",
               "prompt_tokens": 10, "cached_tokens": 0, "miss_cause": "cold"})  # fmt: skip
    console = Console(width=200, record=True)
    console.print(render(board, now=2.0))
    text = console.export_text()
    assert "abcdefgh" in text and "MISS" in text and "cold" in text
