"""The slot state's durable copy: written on every change, read back at start."""

from __future__ import annotations

import pytest

from proxy.core.prefix_index import Prompt
from tests.unit.slots.fakes import CHAT, acquire, answering, manager


async def test_slot_state_round_trips_through_its_mirror(tmp_path) -> None:  # type: ignore[no-untyped-def]
    mirror: dict[str, bytes | None] = {}
    m = manager(2, persist=lambda key, dump: mirror.__setitem__(key, dump and dump()))
    lease = await acquire(m, CHAT, {0: {"tokens": list(range(300))}})
    m.release(lease, completed=True, generated=[7, 8], finish_reason="stop")
    again = manager(2)
    assert again.load_state([(k, v) for k, v in mirror.items() if v is not None]) == 1
    assert again.servers[0].table.held.get(lease.route.slot) == Prompt.of([*range(300), 7, 8])
    # an upstream that is no longer configured is skipped
    assert again.load_state([("live|http://elsewhere|0", next(iter(mirror.values())))]) == 0  # type: ignore[list-item]


async def test_the_learned_restore_cost_survives_a_restart() -> None:
    """A restarted kvproxy routes at the restore cost the server's timings taught it,
    not at the default tenth until it has saved and prefilled again."""
    mirror: dict[str, bytes | None] = {}
    actions: list[str] = []
    m = manager(1, can_save=True, slot_action=answering(actions, ms=20.0),
                persist=lambda key, dump: mirror.__setitem__(key, dump and dump()))  # fmt: skip
    first = await acquire(m, CHAT, {0: {"tokens": list(range(1000))}})
    m.release(first, completed=True, generated=[], finish_reason="stop", prefilled=1000,
              prefill_ms=4000.0)  # fmt: skip
    second = await acquire(m, CHAT, {0: {"tokens": list(range(5000, 5300))}})  # saved first
    m.release(second, completed=True, generated=[], finish_reason="stop")
    assert actions == ["save"]
    again = manager(1)
    again.load_state([(k, v) for k, v in mirror.items() if v is not None])
    assert again.servers[0].read_back.share(0.1) == pytest.approx(0.005)
    # a damaged entry is skipped
    fresh = manager(1)
    fresh.load_state([("rate|http://unused", b"{not json")])
    assert fresh.servers[0].read_back.share(0.1) == 0.1
