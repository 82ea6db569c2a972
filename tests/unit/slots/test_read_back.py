"""The restore decision's cost of reading a slot back, learned per server from its own
timings (issue 20: a fixed tenth of prefill kept an OpenClaw session off its own file on a
CPU where a restore costs 1/2,000 of prefilling the same tokens)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from proxy.slots.read_back import ReadBack
from proxy.slots.routing import RoutePolicy, SavedView, SlotView, choose

P = RoutePolicy()
NOW = 10_000.0


def learned(*events: tuple[str, int, float]) -> ReadBack:
    rate = ReadBack()
    for kind, tokens, ms in events:
        (rate.prefilled if kind == "prefill" else rate.copied)(tokens, ms)
    return rate


SHARES = [
    # (name, events, expected share with the policy's 0.1 as the default)
    ("nothing measured: the policy's share", [], 0.1),
    ("prefill only: the policy's share", [("prefill", 5000, 20_000.0)], 0.1),
    ("copy only: the policy's share", [("copy", 5000, 10.0)], 0.1),
    ("a GPU box: a tenth", [("prefill", 5000, 1000.0), ("copy", 5000, 100.0)], 0.1),
    ("this CPU: 13 ms against 24.5 s, floored", [("prefill", 5830, 24_500.0),
                                                  ("copy", 5830, 13.0)], 0.001),
    ("a slow disk: never above prefill", [("prefill", 1000, 100.0), ("copy", 1000, 500.0)], 1.0),
    ("samples too small to time are skipped", [("prefill", 5000, 5000.0), ("copy", 5000, 50.0),
                                              ("prefill", 3, 300.0), ("copy", 3, 300.0)], 0.01),
    ("bad figures are skipped", [("prefill", 5000, 5000.0), ("copy", 5000, 50.0),
                                 ("prefill", 5000, -1.0), ("copy", 0, 10.0)], 0.01),
]  # fmt: skip


@pytest.mark.parametrize(("events", "share"), [c[1:] for c in SHARES],
                         ids=[c[0] for c in SHARES])  # fmt: skip
def test_share(events: list[tuple[str, int, float]], share: float) -> None:
    assert learned(*events).share(0.1) == pytest.approx(share)


def test_recent_timings_weigh_most() -> None:
    """A server that moved to faster storage (or was restarted on another device) is
    followed within a few restores, not averaged over the whole run."""
    rate = learned(("prefill", 5000, 5000.0), *[("copy", 5000, 500.0)] * 20)
    assert rate.share(0.1) == pytest.approx(0.1)
    for _ in range(10):
        rate.copied(5000, 5.0)
    assert rate.share(0.1) < 0.02
    for _ in range(10):
        rate.copied(5000, 5.0)
    assert rate.share(0.1) < 0.003


def test_the_servers_share_decides_a_restore() -> None:
    """The bench-clients case: session A's own 10,692-token file against the 10,403-token
    system prompt it shares with session B in B's slot. At a tenth of prefill reading the
    file back loses; at this CPU's measured share it wins."""
    slots = [SlotView(0, 0, cached=10_403, held=11_200, last_used=NOW - 20, unsaved=0),
             SlotView(0, 1, cached=0, held=3000, last_used=NOW - 30, unsaved=0)]  # fmt: skip
    saved = SavedView("a", 10_692, 0)
    assert choose(10_800, slots, saved, P, NOW).reason == "prefix-hit"
    cpu = [replace(v, restore_cost=0.001) for v in slots]
    route = choose(10_800, cpu, saved, P, NOW)
    assert (route.slot, route.reason, route.restore, route.predicted) == (1, "restore", "a", 10_692)
