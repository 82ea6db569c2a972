"""The slot table's bookkeeping and miss causes (no server: save/restore is e2e-tested)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from proxy.core.cause import MissCause
from proxy.core.conversation import Conversation
from proxy.core.errors import UpstreamUnavailable
from proxy.core.prefix_index import Prompt
from proxy.slots.manager import Lease, ServerSlots, SlotManager, miss_cause
from proxy.slots.routing import Route, RoutePolicy


class ListTokenizer:
    """Takes the tokens from the body: the manager's logic, not tokenization, is under test."""

    exact = True
    user_marker: tuple[int, ...] = ()

    async def prompt_tokens(self, conv: Conversation, body: dict[str, Any]) -> list[int] | None:
        return body.get("tokens")

    def text_tokens(self, text: str) -> list[int] | None:
        return [ord(c) for c in text]


class NoServer:
    """No server to reconcile with: /slots fails and the index is trusted."""

    kind = "llama"
    url = "http://unused"

    async def get_json(self, path: str) -> Any:
        raise UpstreamUnavailable("no server here")


def manager(slots: int = 2) -> SlotManager:
    server = ServerSlots(0, NoServer(), ListTokenizer(), slots, 4096, can_save=False)  # type: ignore[arg-type]
    return SlotManager([server], RoutePolicy(), 1 << 30, clock=iter(range(1, 10_000)).__next__)


CHAT = Conversation(kind="chat")


async def acquire(m: SlotManager, conv: Conversation, bodies: dict[int, dict[str, Any]]) -> Lease:
    """Tokens, then a slot: what the director does for a request."""
    return await m.acquire_prompts(await m.tokens_for(conv, bodies))


async def test_release_holds_prompt_and_fed_back_tokens() -> None:
    m = manager(1)
    lease = await acquire(m, CHAT, {0: {"tokens": list(range(100))}})
    m.release(lease, completed=True, generated=[1, 2, 3], finish_reason="length")
    # the last sampled token of a length-stopped generation is never fed back
    assert m.servers[0].table.held.get(0) == Prompt.of([*range(100), 1, 2])
    lease = await acquire(m, CHAT, {0: {"tokens": list(range(100))}})
    m.release(lease, completed=True, generated=[1, 2, 3], finish_reason="stop")
    assert len(m.servers[0].table.held.get(0) or ()) == 103


async def test_interrupted_request_keeps_only_the_reused_prefix() -> None:
    m = manager(1)
    lease = await acquire(m, CHAT, {0: {"tokens": list(range(300))}})
    m.release(lease, completed=False, cached_actual=120)
    assert len(m.servers[0].table.held.get(0) or ()) == 120
    assert m.servers[0].table.states[0].busy == 0


async def test_second_turn_is_predicted_on_the_same_slot() -> None:
    m = manager(2)
    first = list(range(1000))
    lease = await acquire(m, CHAT, {0: {"tokens": first}})
    m.release(lease, completed=True, generated=[5, 6], finish_reason="stop")
    other = await acquire(m, CHAT, {0: {"tokens": list(range(5000, 6000))}})
    assert other.route.slot != lease.route.slot  # the hot slot is left alone
    m.release(other, completed=True, generated=[], finish_reason="stop")
    again = await acquire(m, CHAT, {0: {"tokens": [*first, 5, 6, 7, 8]}})
    assert (again.route.slot, again.route.predicted) == (lease.route.slot, 1002)


class LateTokenizer(ListTokenizer):
    """The server path: replies tokenized only by a (slow) round trip."""

    def __init__(self) -> None:
        self.answer: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()

    def text_tokens(self, text: str) -> list[int] | None:
        return None

    async def reply_tokens(self, text: str) -> list[int] | None:
        return await self.answer


async def replied_on_the_server_path() -> tuple[SlotManager, LateTokenizer]:
    """A 100-token prompt answered; its reply still being tokenized by the server."""
    m = manager(1)
    late = LateTokenizer()
    m.servers[0].tokenizer = late
    lease = await acquire(m, CHAT, {0: {"tokens": list(range(100))}})
    m.release(lease, completed=True, finish_reason="stop", reply_text="a reply")
    return m, late


async def test_a_reply_tokenized_by_the_server_is_added_once_known() -> None:
    m, late = await replied_on_the_server_path()
    assert len(m.servers[0].table.held.get(0) or ()) == 100  # the prompt, for now
    late.answer.set_result([7, 8, 9])
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert m.servers[0].table.held.get(0) == Prompt.of([*range(100), 7, 8, 9])
    again = await acquire(m, CHAT, {0: {"tokens": [*range(100), 7, 8, 9, 10]}})
    assert again.route.predicted == 103


async def test_a_late_reply_does_not_overwrite_a_newer_request() -> None:
    m, late = await replied_on_the_server_path()
    other = await acquire(m, CHAT, {0: {"tokens": list(range(500, 520))}})
    m.release(other, completed=False, cached_actual=0, prompt_done=True)
    late.answer.set_result([7, 8, 9])
    await m.aclose()
    assert m.servers[0].table.held.get(0) == Prompt.of(range(500, 520))


async def test_unknown_prompt_is_routed_and_clears_the_slot() -> None:
    m = manager(1)
    lease = await acquire(m, CHAT, {0: {}})
    assert lease.prompt is None
    m.release(lease, completed=True, generated=[1], finish_reason="stop")
    assert m.servers[0].table.held.get(0) is None


def lease_with(known: int, source: str, held: int, restored: bool = False) -> Lease:
    lease = Lease(server=None, route=Route(0, 0, known, "x"), prompt=None, estimated=False)  # type: ignore[arg-type]
    lease.known_best, lease.known_from, lease.known_held, lease.restored = (
        known,
        source,
        held,
        restored,
    )
    return lease


@pytest.mark.parametrize(
    ("lease", "cached", "prompt", "cause"),
    [
        (lease_with(0, "none", 0), 0, 500, MissCause("cold")),
        (lease_with(19, "live", 1300), 19, 1300, MissCause("cold")),
        (lease_with(1200, "live", 1200), 1200, 1250, None),
        (lease_with(1200, "live", 1201), 1200, 1250, None),  # generated tail slack
        (lease_with(1200, "saved", 1200, restored=True), 1200, 1250, None),
        (lease_with(1200, "saved", 1200), 0, 1250, MissCause("evicted")),
        (lease_with(1200, "evicted", 1200), 19, 1250, MissCause("evicted")),
        (lease_with(700, "live", 1500), 700, 900, MissCause("diverged", token=700)),
        (lease_with(1200, "live", 1200), 800, 1250, MissCause("diverged", token=800)),
        (lease_with(1200, "live", 1200), None, 1250, None),
    ],
)
def test_miss_cause(lease: Lease, cached: int | None, prompt: int, cause: MissCause | None) -> None:
    assert miss_cause(lease, cached, prompt) == cause


def test_evicted_saved_files_are_deleted_and_remembered_as_ghosts(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from proxy.slots.table import SavedFile

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
    m._perform(drops)
    assert list(m.catalog.files) == ["kvp-2.bin", "kvp-0.bin", "kvp-3.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kvp-0.bin", "kvp-2.bin", "kvp-3.bin"]
    # an evicted file's prefix is remembered as a ghost, for the "evicted" miss cause
    assert m.ghosts.index.longest(Prompt.of(range(1000, 1128)))[1] == 128


async def test_slot_state_round_trips_through_its_mirror(tmp_path) -> None:  # type: ignore[no-untyped-def]
    mirror: dict[str, bytes | None] = {}
    m = manager(2)
    m.persist = lambda key, dump: mirror.__setitem__(key, dump and dump())
    lease = await acquire(m, CHAT, {0: {"tokens": list(range(300))}})
    m.release(lease, completed=True, generated=[7, 8], finish_reason="stop")
    again = manager(2)
    assert again.load_state([(k, v) for k, v in mirror.items() if v is not None]) == 1
    assert again.servers[0].table.held.get(lease.route.slot) == Prompt.of([*range(300), 7, 8])
    # an upstream that is no longer configured is skipped
    assert again.load_state([("live|http://elsewhere|0", next(iter(mirror.values())))]) == 0  # type: ignore[list-item]


def saving_manager(slots: int, actions: list[str], hang: bool = False) -> SlotManager:
    """A manager whose slot saves and restores are answered in process (or never)."""
    import asyncio

    server = ServerSlots(0, NoServer(), ListTokenizer(), slots, 4096, can_save=True)  # type: ignore[arg-type]
    m = SlotManager([server], RoutePolicy(), 1 << 30, clock=iter(range(1, 10_000)).__next__)

    async def action(server: Any, slot: int, action: str, name: str) -> dict:
        actions.append(action)
        if hang:
            await asyncio.Event().wait()
        return {"n_written": 10}

    m._slot_action = action  # type: ignore[method-assign]
    return m


async def test_a_request_cancelled_while_its_slot_is_being_saved_leaks_nothing() -> None:
    """Issue 10: a client that went away during a save or restore left the slot's busy
    count raised for ever."""
    import asyncio

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


async def test_a_plain_request_does_not_wait_for_a_checkpoint_of_its_slot() -> None:
    """Issue 10: a request waited for an idle checkpoint of its slot to finish; the
    server runs a save it has already begun before the request anyway."""
    import asyncio

    m = manager(1)
    first = await acquire(m, CHAT, {0: {"tokens": list(range(1000))}})
    m.release(first, completed=True, generated=[], finish_reason="stop")
    await m.servers[0].prep[0].acquire()  # a checkpoint is saving this slot
    lease = await asyncio.wait_for(acquire(m, CHAT, {0: {"tokens": [*range(1000), 1, 2]}}), 2)
    assert lease.route.predicted == 1000
    m.servers[0].prep[0].release()


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


async def test_waiting_for_a_slot_being_saved_does_not_hold_the_manager_lock() -> None:
    """Issue 10: acquire waited for a slot's save while holding the manager's lock, so one
    checkpoint stalled routing for every request."""
    import asyncio

    m = manager(2)
    first = await acquire(m, CHAT, {0: {"tokens": list(range(1000))}})
    m.release(first, completed=True, generated=[], finish_reason="stop")
    busy = m.servers[0].prep[first.route.slot]
    await busy.acquire()  # being saved
    waiting = asyncio.create_task(acquire(m, CHAT, {0: {"tokens": [*range(1000), 1, 2]}}))
    await asyncio.sleep(0.05)
    other = await asyncio.wait_for(acquire(m, CHAT, {0: {"tokens": list(range(7000, 7100))}}), 2)
    assert other.route.slot != first.route.slot
    busy.release()
    lease = await asyncio.wait_for(waiting, 2)
    assert lease.route.slot == first.route.slot


def test_a_stream_closed_after_its_first_token_leaves_the_prompt_held() -> None:
    import asyncio

    m = manager(1)
    lease = asyncio.run(acquire(m, CHAT, {0: {"tokens": list(range(300))}}))
    m.release(lease, completed=False, cached_actual=None, prompt_done=True)
    assert len(m.servers[0].table.held.get(0) or ()) == 300


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
    assert m.saved_bytes() == 20 and len(m.catalog) == 2
    lease = await acquire(m, CHAT, {0: {"tokens": list(range(20000, 21000))}})
    assert calls == ["save", "save"]


async def test_when_every_slot_is_busy_a_request_waits_for_the_first_free_one() -> None:
    """Issue 10: 64 concurrent chats on 2 slots were pinned on arrival (62 on one slot), so
    a free slot sat idle while another had a queue."""
    import asyncio

    m = manager(2)
    a = await acquire(m, CHAT, {0: {"tokens": list(range(1000))}})
    b = await acquire(m, CHAT, {0: {"tokens": list(range(5000, 6000))}})
    # one request per slot may wait at the server behind the running one
    ahead = [await acquire(m, CHAT, {0: {"tokens": list(range(k, k + 300))}})
             for k in (20000, 30000)]  # fmt: skip
    assert sorted(lease.route.slot for lease in ahead) == [0, 1]
    assert all(lease.route.reason == "all-busy-least-queued" for lease in ahead)
    third = asyncio.create_task(acquire(m, CHAT, {0: {"tokens": list(range(9000, 9300))}}))
    fourth = asyncio.create_task(acquire(m, CHAT, {0: {"tokens": list(range(7000, 7300))}}))
    await asyncio.sleep(0.05)
    assert not third.done() and not fourth.done()  # waiting in kvproxy, pinned nowhere
    m.release(b, completed=True, generated=[], finish_reason="stop")
    lease = await asyncio.wait_for(third, 2)  # first come, first served
    assert lease.route.slot == b.route.slot and lease.queued_ms > 0
    assert not fourth.done()
    m.release(a, completed=True, generated=[], finish_reason="stop")
    assert (await asyncio.wait_for(fourth, 2)).route.slot == a.route.slot


async def test_a_long_shared_prefix_still_queues_behind_its_busy_slot() -> None:
    m = manager(2)
    a = await acquire(m, CHAT, {0: {"tokens": list(range(5000))}})
    m.release(a, completed=True, generated=[], finish_reason="stop")
    a = await acquire(m, CHAT, {0: {"tokens": [*range(5000), 1]}})
    await acquire(m, CHAT, {0: {"tokens": list(range(9000, 9300))}})
    pinned = await acquire(m, CHAT, {0: {"tokens": [*range(5000), 2]}})
    assert (pinned.route.slot, pinned.route.reason) == (a.route.slot, "all-busy")


async def test_waiting_beyond_the_queue_timeout_is_overloaded() -> None:
    from proxy.core.errors import Overloaded

    m = manager(2)
    m.queue_timeout = 0.1
    for k in range(4):
        await acquire(m, CHAT, {0: {"tokens": list(range(k * 1000, k * 1000 + 500))}})
    with pytest.raises(Overloaded, match="--queue-timeout"):
        await acquire(m, CHAT, {0: {"tokens": list(range(5000, 5300))}})
    assert [s.busy for s in m.servers[0].table.states] == [2, 2]
    assert not m._waiters


async def test_a_woken_request_that_is_cancelled_passes_the_slot_on() -> None:
    import asyncio

    m = manager(2)
    a = await acquire(m, CHAT, {0: {"tokens": list(range(1000))}})
    await acquire(m, CHAT, {0: {"tokens": list(range(5000, 6000))}})
    for k in (20000, 30000):
        await acquire(m, CHAT, {0: {"tokens": list(range(k, k + 300))}})
    first = asyncio.create_task(acquire(m, CHAT, {0: {"tokens": list(range(9000, 9300))}}))
    second = asyncio.create_task(acquire(m, CHAT, {0: {"tokens": list(range(7000, 7300))}}))
    await asyncio.sleep(0.05)
    m.release(a, completed=True, generated=[], finish_reason="stop")
    first.cancel()  # woken, and gone before it could route
    lease = await asyncio.wait_for(second, 2)
    assert lease.route.slot == a.route.slot
    assert m.servers[0].table.states[a.route.slot].busy == 2


async def test_routing_waits_for_a_reply_still_being_tokenized() -> None:
    m, late = await replied_on_the_server_path()
    asyncio.get_running_loop().call_later(0.05, late.answer.set_result, [7, 8])
    again = await acquire(m, CHAT, {0: {"tokens": [*range(100), 7, 8, 9]}})
    assert again.route.predicted == 102
