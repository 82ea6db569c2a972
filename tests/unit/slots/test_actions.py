"""Slot saves, restores, checkpoints and file deletion, with in-process slot actions."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from proxy.core.prefix_index import Prompt
from proxy.slots.table import SavedFile
from tests.unit.slots.fakes import CHAT, acquire, manager, saving_manager


def test_evicted_saved_files_are_deleted_and_remembered_as_ghosts(tmp_path) -> None:  # type: ignore[no-untyped-def]
    m = manager(1)
    m.servers[0].slot_dir = tmp_path
    m.catalog.max_bytes = 350
    drops = []
    for i in range(4):
        name = f"kvp-{i}.bin"
        (tmp_path / name).write_bytes(b"x")
        drops += m.catalog.add(SavedFile(name, 0, 100), Prompt.of(range(i * 1000, i * 1000 + 128)))
        if i == 2:
            m.catalog.touch("kvp-0.bin")  # used recently: kept
    m.actions.perform(drops)
    assert list(m.catalog.files) == ["kvp-2.bin", "kvp-0.bin", "kvp-3.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kvp-0.bin", "kvp-2.bin", "kvp-3.bin"]
    # an evicted file's prefix is remembered as a ghost, for the "evicted" miss cause
    assert m.ghosts.index.longest(Prompt.of(range(1000, 1128)))[1] == 128


async def test_a_request_cancelled_while_its_slot_is_being_saved_leaks_nothing() -> None:
    """Issue 10: a client that went away during a save or restore left the slot's busy
    count raised for ever."""
    actions: list[str] = []
    m = saving_manager(1, actions, hang=True)
    first = await acquire(m, CHAT, {0: {"tokens": list(range(1000))}})
    m.release(first, completed=True, generated=[], finish_reason="stop")
    # an unrelated prompt overwrites the only slot: its 1000 tokens are saved first
    task = asyncio.create_task(acquire(m, CHAT, {0: {"tokens": list(range(5000, 5300))}}))
    await asyncio.sleep(0.05)
    assert actions == ["save"]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert m.servers[0].table.states[0].busy == 0
    assert not m.servers[0].prep[0].locked()


async def test_a_checkpoint_waits_while_any_request_is_on_the_server() -> None:
    """llama-server writes slot files on its main loop: a checkpoint of one slot would
    delay the request on another."""
    actions: list[str] = []
    m = saving_manager(2, actions)
    m.servers[0].slot_dir = Path("/nonexistent")  # files are deletable: checkpoints allowed
    first = await acquire(m, CHAT, {0: {"tokens": list(range(1000))}})
    m.release(first, completed=True, generated=[], finish_reason="stop")
    other = await acquire(m, CHAT, {0: {"tokens": list(range(5000, 5100))}})
    assert other.route.slot != first.route.slot
    assert await m.checkpoint(0) == 0 and actions == []
    m.release(other, completed=True, generated=[], finish_reason="stop")
    assert await m.checkpoint(0) == 1 and actions == ["save"]


async def test_no_idle_checkpoint_where_superseded_files_cannot_be_deleted(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Issue 10: each idle checkpoint of an external server left a new full slot file and
    forgot the old one undeleted (241 MB for one 3.6k-token conversation)."""
    calls: list[str] = []
    m = saving_manager(1, calls)
    lease = await acquire(m, CHAT, {0: {"tokens": list(range(1000))}})
    m.release(lease, completed=True, generated=[], finish_reason="stop")
    assert await m.checkpoint(0) == 0 and calls == []
    m.servers[0].slot_dir = tmp_path  # --slot-dir: the server's directory is reachable
    assert await m.checkpoint(0) == 1 and calls == ["save"]


async def test_files_kvproxy_cannot_delete_stay_counted_and_stop_further_saves() -> None:
    """Issue 10: eviction saves on an external server without --slot-dir were forgotten
    when the budget dropped them, though they stay on the server's disk."""
    calls: list[str] = []
    m = saving_manager(1, calls)
    m.catalog.max_bytes = 15  # each save writes 10 bytes
    for base in (0, 5000, 9000):
        lease = await acquire(m, CHAT, {0: {"tokens": list(range(base, base + 1000))}})
        m.release(lease, completed=True, generated=[], finish_reason="stop")
    # the first two conversations were saved before being overwritten; the third save
    # would pass the budget with files kvproxy cannot delete, so it is not taken
    assert calls == ["save", "save"]
    assert m.catalog.total_bytes() == 20 and len(m.catalog) == 2
    lease = await acquire(m, CHAT, {0: {"tokens": list(range(20000, 21000))}})
    assert calls == ["save", "save"]
