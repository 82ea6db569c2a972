"""The slot manager's queue, routing and bookkeeping (no server: save/restore is e2e-tested)."""

from __future__ import annotations

import asyncio

import pytest

from proxy.core.prefix_index import Prompt
from proxy.slots.manager import SlotManager
from tests.unit.slots.fakes import CHAT, Clock, ListTokenizer, acquire, manager


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
    late = LateTokenizer()
    m = manager(1, tokenizer=late)
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


async def test_a_plain_request_does_not_wait_for_a_checkpoint_of_its_slot() -> None:
    """Issue 10: a request waited for an idle checkpoint of its slot to finish; the
    server runs a save it has already begun before the request anyway."""
    m = manager(1)
    first = await acquire(m, CHAT, {0: {"tokens": list(range(1000))}})
    m.release(first, completed=True, generated=[], finish_reason="stop")
    await m.servers[0].prep[0].acquire()  # a checkpoint is saving this slot
    lease = await asyncio.wait_for(acquire(m, CHAT, {0: {"tokens": [*range(1000), 1, 2]}}), 2)
    assert lease.route.predicted == 1000
    m.servers[0].prep[0].release()


async def test_waiting_for_a_slot_being_saved_does_not_hold_the_manager_lock() -> None:
    """Issue 10: acquire waited for a slot's save while holding the manager's lock, so one
    checkpoint stalled routing for every request."""
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
    m = manager(1)
    lease = asyncio.run(acquire(m, CHAT, {0: {"tokens": list(range(300))}}))
    m.release(lease, completed=False, cached_actual=None, prompt_done=True)
    assert len(m.servers[0].table.held.get(0) or ()) == 300


async def test_when_every_slot_is_busy_a_request_waits_for_the_first_free_one() -> None:
    """Issue 10: 64 concurrent chats on 2 slots were pinned on arrival (62 on one slot), so
    a free slot sat idle while another had a queue."""
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

    m = manager(2, queue_timeout=0.1)
    for k in range(4):
        await acquire(m, CHAT, {0: {"tokens": list(range(k * 1000, k * 1000 + 500))}})
    with pytest.raises(Overloaded, match="--queue-timeout"):
        await acquire(m, CHAT, {0: {"tokens": list(range(5000, 5300))}})
    assert [s.busy for s in m.servers[0].table.states] == [2, 2]
    assert not m._waiters


async def test_a_woken_request_that_is_cancelled_passes_the_slot_on() -> None:
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


async def test_three_sessions_on_two_slots_give_up_the_cheap_one() -> None:
    """Issue 20: a long conversation and a short one both idle past the hot window, and a
    third needs a slot: the short one is given up (least expected prefill to bring back),
    not the long least recently used one, so that the long one's return is a hit."""
    clock = Clock(100.0)
    m = manager(2, clock=clock, n_ctx=8192)
    long, short = list(range(3000)), list(range(10_000, 10_200))
    for tokens in (long, short):
        lease = await acquire(m, CHAT, {0: {"tokens": tokens}})
        m.release(lease, completed=True, generated=[1, 2], finish_reason="stop")
        clock.now += 100.0
    clock.now += 4000.0  # both cold (past hot_seconds): recency alone would evict the long one
    third = await acquire(m, CHAT, {0: {"tokens": list(range(20_000, 20_300))}})
    m.release(third, completed=True, generated=[1, 2], finish_reason="stop")
    prefilled = 0
    for tokens in (long, short):  # both come back
        prompt = [*tokens, 1, 2, 3, 4]
        lease = await acquire(m, CHAT, {0: {"tokens": prompt}})
        m.release(lease, completed=True, generated=[1, 2], finish_reason="stop")
        prefilled += len(prompt) - lease.route.predicted
    assert prefilled == 2 + 204  # the long one resumes; only the short one is prefilled again
