"""Slot saves, restores, checkpoints and file deletion, with in-process slot actions."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from proxy.core.prefix_index import Prompt
from proxy.slots.catalog import SavedFile
from proxy.slots.manager import SlotManager
from proxy.slots.servers import Lease
from tests.unit.slots.fakes import (
    CHAT,
    Clock,
    NoServer,
    acquire,
    answering,
    manager,
    saving_manager,
    slots_answer,
)


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


async def served(m: SlotManager, clock: Clock, tokens: list[int], task: int) -> Lease:
    """One request through kvproxy, answered by the server as task ``task``; then the
    server's /slots shows it, a second later."""
    lease = await acquire(m, CHAT, {0: {"tokens": tokens}})
    m.release(lease, completed=True, generated=[], finish_reason="stop")
    server: NoServer = m.servers[0].upstream  # type: ignore[assignment]
    assert server.slots is not None
    server.slots[lease.route.slot].update(id_task=task, n_prompt_tokens=len(tokens))
    clock.now += 5
    return lease


async def overwritten_by_another_client() -> tuple[SlotManager, Clock, NoServer, Lease]:
    """Two conversations through kvproxy, read back from /slots; then a request kvproxy
    did not route overwrites the first one's slot with a longer prompt of its own (the
    slot holds more than before, so its length alone does not tell)."""
    clock = Clock()
    m = manager(2, clock=clock)
    server: NoServer = m.servers[0].upstream  # type: ignore[assignment]
    server.slots = slots_answer((0, 1, 0), (1, 2, 0))
    first = await served(m, clock, list(range(1000)), 10)
    await served(m, clock, list(range(5000, 5100)), 11)
    await m.sync(m.servers[0])  # the server's tasks as kvproxy's own, read back
    server.slots[first.route.slot].update(id_task=12, n_prompt_tokens=1500)
    return m, clock, server, first


async def test_mark_stale_rereads_the_slots_before_the_next_request_is_routed() -> None:
    """Issue 19: a forwarded generating request overwrote a slot, and the table went on
    predicting reuse there until the next regular /slots read (and then only if the slot
    held fewer tokens than before)."""
    m, _, server, first = await overwritten_by_another_client()
    reads = server.reads
    m.mark_stale(0)  # within SYNC_INTERVAL of the last read: only the mark makes it
    lease = await acquire(m, CHAT, {0: {"tokens": [*range(1000), 1, 2]}})
    assert server.reads == reads + 1
    assert lease.route.predicted == 0 and m.servers[0].table.held.get(first.route.slot) is None


async def test_a_task_kvproxy_did_not_send_is_seen_at_the_next_regular_read() -> None:
    m, clock, _, _ = await overwritten_by_another_client()
    clock.now += 5
    lease = await acquire(m, CHAT, {0: {"tokens": [*range(1000), 1, 2]}})
    assert lease.route.predicted == 0


async def test_the_stale_mark_holds_while_a_request_kvproxy_did_not_send_runs() -> None:
    m, clock, server, first = await overwritten_by_another_client()
    assert server.slots is not None
    server.slots[first.route.slot]["is_processing"] = True  # the forwarded request, running
    m.mark_stale()
    await acquire(m, CHAT, {0: {"tokens": list(range(7000, 7100))}})
    assert m.servers[0].stale
    server.slots[first.route.slot]["is_processing"] = False
    clock.now += 5
    await acquire(m, CHAT, {0: {"tokens": list(range(8000, 8100))}})
    assert not m.servers[0].stale


@pytest.mark.parametrize(
    ("case", "saved"),
    [
        ("in-sync", 1),
        ("cut-back", 0),  # /slots: the slot holds fewer tokens than kvproxy put there
        ("overwritten", 0),  # /slots: a task kvproxy did not send ran on the slot
        ("stale-unread", 0),  # marked stale, and /slots did not answer
        ("stale-reread", 1),  # marked stale, and /slots shows the slot as kvproxy left it
    ],
)
async def test_a_checkpoint_saves_only_what_kvproxy_put_in_the_slot(
    case: str, saved: int, tmp_path: Path
) -> None:
    """Issue 19: a checkpoint saved whatever the server held under the name of what
    kvproxy had put there, so a later restore brought another client's prompt back."""
    actions: list[str] = []
    clock = Clock()
    m = saving_manager(1, actions, clock=clock)
    m.servers[0].slot_dir = tmp_path
    server: NoServer = m.servers[0].upstream  # type: ignore[assignment]
    server.slots = slots_answer((0, 1, 0))
    await served(m, clock, list(range(1000)), 10)
    await m.sync(m.servers[0])
    clock.now += 5
    if case == "cut-back":
        server.slots = slots_answer((0, 10, 600))
        await m.sync(m.servers[0])
    elif case == "overwritten":
        server.slots = slots_answer((0, 11, 1000))
        await m.sync(m.servers[0])
    elif case.startswith("stale"):
        m.mark_stale(0)
        if case == "stale-unread":
            server.slots = None
    assert await m.checkpoint(0) == saved
    assert actions == ["save"] * saved


async def test_a_restart_just_after_the_last_reading_shows_before_the_next_route() -> None:
    """CI found it: a /slots reading under a second old was trusted (the watch read every
    half second), but a small model's server restarts within that, and the next turn was
    predicted to reuse a slot that was empty. A route now uses only a reading started after
    its request arrived."""
    clock = Clock()
    m = manager(2, clock=clock)
    server: NoServer = m.servers[0].upstream  # type: ignore[assignment]
    server.slots = slots_answer((0, 1, 0), (1, 2, 0))
    await served(m, clock, list(range(1000)), 10)
    await m.actions.sync(m.servers[0], max_age=0)  # the last reading: the slot is full
    server.slots = slots_answer((0, 1, 0), (1, 2, 0))  # restarted: both slots empty
    clock.now += 0.4
    lease = await acquire(m, CHAT, {0: {"tokens": [*range(1000), 1, 2]}})
    assert lease.route.predicted == 0


async def test_the_look_ahead_reads_slots_while_the_request_is_prepared() -> None:
    """Issue 20 (own time): the read (~2 ms on loopback) starts as the request arrives
    (``look_ahead``), runs while it is parsed and tokenized, and the route uses it; a route
    with no look-ahead of its own reads /slots itself."""
    clock = Clock()
    m = manager(2, clock=clock)
    server: NoServer = m.servers[0].upstream  # type: ignore[assignment]
    server.slots = slots_answer((0, 1, 0), (1, 2, 0))
    first = await served(m, clock, list(range(1000)), 10)
    reads = server.reads
    ticket = m.look_ahead()
    prompts = await m.tokens_for(CHAT, {0: {"tokens": [*range(1000), 1, 2]}})
    lease = await m.acquire_prompts(prompts, ticket=ticket)
    assert server.reads == reads + 1  # the look-ahead's reading, and no other
    assert lease.route.slot == first.route.slot and lease.route.predicted == 1000
    m.release(lease, completed=True, generated=[], finish_reason="stop")
    ticket = m.look_ahead()
    server.slots = slots_answer((0, 1, 0), (1, 2, 0))  # restarted after the read started
    lease = await acquire(m, CHAT, {0: {"tokens": [*range(1000), 1, 2, 3]}})
    assert lease.route.predicted == 0 and server.reads == reads + 3


async def test_no_look_ahead_while_a_slot_is_busy() -> None:
    """A busy server answers /slots only between its batches: the read would wait."""
    clock = Clock()
    m = manager(2, clock=clock)
    server: NoServer = m.servers[0].upstream  # type: ignore[assignment]
    server.slots = slots_answer((0, 1, 0), (1, 2, 0))
    lease = await acquire(m, CHAT, {0: {"tokens": list(range(100))}})
    await asyncio.gather(*[t for t in [m.servers[0].sync_task] if t is not None])
    reads, before = server.reads, m.servers[0].sync_task
    m.look_ahead()
    assert m.servers[0].sync_task is before and server.reads == reads  # no read started
    m.release(lease, completed=True, generated=[], finish_reason="stop")
    m.look_ahead()
    task = m.servers[0].sync_task
    assert task is not None and task is not before
    await task
    assert server.reads == reads + 1


async def test_the_checkpoint_loop_outlives_an_unexpected_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review F2: only ProxyError was caught, so any other error ended the loop silently
    (no more checkpoints) and was raised again at shutdown."""
    m = manager(1)
    rounds: list[int] = []

    async def checkpoint(idle_seconds: float) -> int:
        rounds.append(1)
        if len(rounds) == 1:
            raise RuntimeError("a bug in one round")
        return 0

    monkeypatch.setattr(m.actions, "checkpoint", checkpoint)
    loop = asyncio.create_task(m.checkpoint_loop(0, every=0))
    while len(rounds) < 3 and not loop.done():
        await asyncio.sleep(0.01)
    assert not loop.done() and len(rounds) >= 3
    loop.cancel()
    with pytest.raises(asyncio.CancelledError):
        await loop


async def test_the_servers_timings_set_its_restore_cost() -> None:
    """Issue 20: what a restore costs is learned from the server's own figures (a save's
    or restore's ``timings`` against the prefill the responses report), and every slot
    view of that server carries it to the router."""
    actions: list[str] = []
    m = manager(1, can_save=True, slot_action=answering(actions, ms=20.0))
    first = await acquire(m, CHAT, {0: {"tokens": list(range(1000))}})
    m.release(first, completed=True, generated=[], finish_reason="stop", prefilled=1000,
              prefill_ms=4000.0)  # fmt: skip
    second = await acquire(m, CHAT, {0: {"tokens": list(range(5000, 5300))}})
    assert actions == ["save"]  # 1,000 tokens in 20 ms against 4 ms a token of prefill
    assert m.servers[0].read_back.share(0.1) == pytest.approx(0.005)
    m.release(second, completed=True, generated=[], finish_reason="stop")
    prompts = await m.tokens_for(CHAT, {0: {"tokens": list(range(1000))}})
    assert [v.restore_cost for v in m.views(prompts)] == [pytest.approx(0.005)]
