"""The slot state's durable copy: written on every change, read back at start."""

from __future__ import annotations

from proxy.core.prefix_index import Prompt
from tests.unit.slots.fakes import CHAT, acquire, manager


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
