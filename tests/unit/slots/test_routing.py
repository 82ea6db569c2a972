"""Routing decisions, table-driven (pure)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from proxy.slots.routing import RoutePolicy, SavedView, SlotView, choose, eviction_cost

NOW = 10_000.0
P = RoutePolicy()


def slot(i: int, cached: int = 0, held: int = 0, busy: int = 0, age: float = 60.0,
         unsaved: int = -1, server: int = 0, public: bool = False) -> SlotView:  # fmt: skip
    return SlotView(
        server=server,
        slot=i,
        cached=cached,
        held=held,
        busy=busy,
        last_used=NOW - age if held or age < 60 else 0.0,
        unsaved=held if unsaved < 0 else unsaved,
        public=public,
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
    ("a session's own file beats another session's shared system prompt", 500,
     [slot(0, 198, 480, age=30, unsaved=0), slot(1, 6, 400, age=30, unsaved=0)],
     SavedView("f", 430, 0), (0, "restore", 430, False, "f")),
    ("a restore over the session's own shorter prefix loses nothing", 3000,
     [slot(0, 1000, 1000, age=5), slot(1, 0, 3000, age=5)], SavedView("f", 1500, 0),
     (0, "restore", 1500, False, "f")),
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


# Issue 20, point 4: the slot given up is the one whose loss costs the least expected prefill
# (the tokens no saved file holds, times the chance its session speaks again, halving every
# idle_half_life seconds), not the least recently used.
H = P.idle_half_life

EVICTIONS = [
    # (name, prompt_len, slots, saved, expected (slot, reason, predicted, save_first, restore))
    ("restore: a saved slot goes before an older unsaved one", 3000,
     [slot(0, 0, 4000, age=100), slot(1, 0, 3000, age=10, unsaved=0)], SavedView("f", 2500, 0),
     (1, "restore", 2500, False, "f")),
    ("restore: a short recent slot goes before a long older one", 3000,
     [slot(0, 0, 4000, age=100), slot(1, 0, 600, age=10)], SavedView("f", 2500, 0),
     (1, "restore", 2500, True, "f")),
    ("restore: only the unsaved tail counts", 3000,
     [slot(0, 0, 4000, age=100, unsaved=100), slot(1, 0, 600, age=10)], SavedView("f", 2500, 0),
     (0, "restore", 2500, True, "f")),
    ("cold slots: the short one goes, not the long least recently used one", 300,
     [slot(0, 0, 6000, age=4000), slot(1, 0, 200, age=3000)], None, (1, "cold", 0, False, None)),
    ("hot slots: a long slot idle for 28 minutes goes before a short one just used", 300,
     [slot(0, 0, 3000, age=2.8 * H), slot(1, 0, 1000, age=5)], None, (0, "evict", 0, True, None)),
    ("a public warm-up slot is free to give up", 300,
     [slot(0, 0, 2000, age=1, public=True), slot(1, 0, 800, age=H)], None,
     (0, "evict", 0, True, None)),
    ("equal length and savedness: the least recently used goes (no match)", 300,
     [slot(0, 0, 2000, age=50), slot(1, 0, 2000, age=100)], None, (1, "evict", 0, True, None)),
    ("equal length and savedness: the least recently used goes (restore)", 3000,
     [slot(0, 0, 2000, age=50), slot(1, 0, 2000, age=100)], SavedView("f", 2500, 0),
     (1, "restore", 2500, True, "f")),
    ("equal length, both saved: the least recently used goes", 300,
     [slot(0, 0, 2000, age=50, unsaved=0), slot(1, 0, 2000, age=100, unsaved=0)], None,
     (1, "evict", 0, False, None)),
]  # fmt: skip


@pytest.mark.parametrize(("prompt_len", "slots", "saved", "expected"),
                         [c[1:] for c in EVICTIONS], ids=[c[0] for c in EVICTIONS])  # fmt: skip
def test_victim_by_expected_prefill(prompt_len: int, slots: list[SlotView],
                                    saved: SavedView | None, expected: tuple) -> None:  # fmt: skip
    route = choose(prompt_len, slots, saved, P, NOW)
    assert (route.slot, route.reason, route.predicted, route.save_first, route.restore) == expected


COSTS = [
    # (name, view, tokens the request keeps, expected cost)
    ("empty", slot(0), 0, 0.0),
    ("saved", slot(0, 0, 2000, age=5, unsaved=0), 0, 0.0),
    ("never used", SlotView(0, 0, cached=0, held=2000), 0, 0.0),
    ("public warm-up", slot(0, 0, 2000, age=5, public=True), 0, 0.0),
    ("just used", slot(0, 0, 2000, age=0.001), 0, 2000 * 0.5 ** (0.001 / H)),
    ("one half-life idle", slot(0, 0, 2000, age=H), 0, 1000.0),
    ("two half-lives idle", slot(0, 0, 2000, age=2 * H), 0, 500.0),
    ("only the unsaved tail", slot(0, 0, 2000, age=H, unsaved=600), 0, 300.0),
    ("kept prefix not lost", slot(0, 1500, 2000, age=H), 1500, 250.0),
    ("kept prefix reaches into the unsaved tail", slot(0, 0, 2000, age=H, unsaved=600), 1800,
     100.0),
]  # fmt: skip


@pytest.mark.parametrize(("view", "kept", "cost"), [c[1:] for c in COSTS],
                         ids=[c[0] for c in COSTS])  # fmt: skip
def test_eviction_cost(view: SlotView, kept: int, cost: float) -> None:
    assert eviction_cost(view, kept, P, NOW) == pytest.approx(cost)


def test_half_life_is_a_policy_option() -> None:
    """Idle time weighs nothing with an endless half-life: the shorter loss goes."""
    slots = [slot(0, 0, 3000, age=2.8 * H), slot(1, 0, 1000, age=5)]
    assert choose(300, slots, None, replace(P, idle_half_life=1e12), NOW).slot == 1
    assert choose(300, slots, None, P, NOW).slot == 0


def test_default_half_life_is_documented() -> None:
    assert f"`{P.idle_half_life:g}`" in Path("docs/architecture.md").read_text()


@pytest.mark.parametrize(("savable", "expected"), [
    # Claude Code's second session shares its system prompt (1,950 tokens) with the first,
    # which just spoke. Where the server can save the first session before it is
    # overwritten (and restore it when it comes back), sharing beats an empty slot, as
    # llama-server's own choice does; where it cannot, the first session keeps its slot.
    (True, (0, "prefix-hit", 1950, True)),
    (False, (1, "empty", 0, False)),
])  # fmt: skip
def test_a_slot_the_server_can_save_is_cheap_to_give_up(
    savable: bool, expected: tuple[int, str, int, bool]
) -> None:
    slots = [replace(slot(0, 1950, 4300, age=5), savable=savable), slot(1)]
    route = choose(4281, slots, None, P, NOW)
    assert (route.slot, route.reason, route.predicted, route.save_first) == expected


def test_a_short_tail_under_the_save_threshold_is_not_saved_and_counts_whole() -> None:
    cheap = replace(slot(0, 0, 300, age=5), savable=True)
    assert eviction_cost(cheap, 100, P, NOW) == pytest.approx(200 * 0.5 ** (5 / 600))
    big = replace(slot(0, 0, 4000, age=5), savable=True)
    assert eviction_cost(big, 0, P, NOW) == pytest.approx(4000 * P.restore_cost * 0.5 ** (5 / 600))
