"""Routing decisions, table-driven (pure)."""

from __future__ import annotations

import pytest

from proxy.slots.routing import RoutePolicy, SavedView, SlotView, choose

NOW = 10_000.0
P = RoutePolicy()


def slot(i: int, cached: int = 0, held: int = 0, busy: int = 0, age: float = 60.0,
         unsaved: int = -1, server: int = 0) -> SlotView:  # fmt: skip
    return SlotView(
        server=server,
        slot=i,
        cached=cached,
        held=held,
        busy=busy,
        last_used=NOW - age if held or age < 60 else 0.0,
        unsaved=held if unsaved < 0 else unsaved,
    )


CASES = [
    # (name, prompt_len, slots, saved, expected (slot, reason, predicted, save_first, restore))
    ("best prefix wins", 2000,
     [slot(0, 100, 800), slot(1, 1500, 1500)], None, (1, "prefix-hit", 1500, False, None)),
    ("at least one token is evaluated", 1500,
     [slot(0, 1500, 1500)], None, (0, "prefix-hit", 1499, False, None)),
    ("ties: idle over busy", 2000,
     [slot(0, 1000, 1000, busy=1), slot(1, 1000, 1000)],
     None, (1, "prefix-hit", 1000, False, None)),
    ("ties: least recently used", 2000,
     [slot(0, 500, 500, age=5), slot(1, 500, 500, age=50)],
     None, (1, "prefix-hit", 500, False, None)),
    ("empty slot before a hot one", 300,
     [slot(0, 20, 3000, age=5), slot(1)], None, (1, "empty", 0, False, None)),
    ("cold slot before a hot one", 300,
     [slot(0, 20, 3000, age=5), slot(1, 0, 3000, age=7200)], None, (1, "cold", 0, True, None)),
    ("shared system prompt does not pull a short prompt onto a hot slot", 400,
     [slot(0, 200, 4000, age=1), slot(1, 0, 100, age=30)], None, (1, "cold", 0, False, None)),
    ("all hot: the one losing least, saved first", 300,
     [slot(0, 0, 5000, age=5), slot(1, 0, 900, age=5)], None, (1, "evict", 0, True, None)),
    ("a saved slot is overwritten without a new save", 300,
     [slot(0, 0, 900, age=5, unsaved=0)], None, (0, "evict", 0, False, None)),
    ("load guard: busy slot with a small gain loses to an idle one", 3000,
     [slot(0, 1000, 1000, busy=1), slot(1)], None, (1, "load-guard", 0, False, None)),
    ("load guard: a large gain is worth queueing once", 5000,
     [slot(0, 4000, 4000, busy=1), slot(1)], None, (0, "prefix-hit", 4000, False, None)),
    ("load guard: never max_queue deep", 5000,
     [slot(0, 4000, 4000, busy=2), slot(1)], None, (1, "load-guard", 0, False, None)),
    ("all busy: a small gain waits for the first free slot", 2000,
     [slot(0, 100, 100, busy=1), slot(1, 900, 900, busy=1)],
     None, (1, "all-busy-least-queued", 900, False, None)),
    ("all busy: a burst spreads by queue depth, not onto one slot", 2000,
     [slot(0, 300, 300, busy=5), slot(1, 0, 200, busy=1)],
     None, (1, "all-busy-least-queued", 0, False, None)),
    ("all busy: a large gain still queues where the prefix is", 6000,
     [slot(0, 5000, 5000, busy=1), slot(1, 0, 200, busy=1)],
     None, (0, "all-busy", 5000, False, None)),
    ("all busy: never deeper than max_queue while another slot is shallower", 6000,
     [slot(0, 5000, 5000, busy=3), slot(1, 0, 200, busy=1)],
     None, (1, "all-busy-least-queued", 0, False, None)),
    ("restore beats a weak live match", 3000,
     [slot(0, 19, 1500, age=5), slot(1)],
     SavedView("f", 2500, 0), (1, "restore", 2500, False, "f")),
    ("restore evicts the LRU slot and saves it first", 3000,
     [slot(0, 0, 1500, age=5), slot(1, 0, 1400, age=9)], SavedView("f", 2500, 0),
     (1, "restore", 2500, True, "f")),
    ("no restore for a small gain", 3000,
     [slot(0, 2400, 2400), slot(1)], SavedView("f", 2500, 0), (0, "prefix-hit", 2400, False, None)),
]  # fmt: skip


@pytest.mark.parametrize(("prompt_len", "slots", "saved", "expected"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])  # fmt: skip
def test_choose(prompt_len: int, slots: list[SlotView], saved: SavedView | None,
                expected: tuple) -> None:  # fmt: skip
    route = choose(prompt_len, slots, saved, P, NOW)
    assert (route.slot, route.reason, route.predicted, route.save_first, route.restore) == expected


def test_restore_goes_to_the_upstream_that_saved_it() -> None:
    slots = [slot(0, server=0), slot(0, server=1)]
    route = choose(3000, slots, SavedView("f", 2500, server=1), P, NOW)
    assert (route.server, route.restore) == (1, "f")


def test_spread_across_upstreams_by_prefix() -> None:
    slots = [slot(0, 10, 10, server=0), slot(0, 1200, 1200, server=1)]
    assert choose(2000, slots, None, P, NOW).server == 1
