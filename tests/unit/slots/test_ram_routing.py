"""Routing with llama-server's host-RAM prompt cache (``--cache-ram``, on by default): the
views predict what the server loads, a slot whose content RAM keeps is cheap to give up,
a file is restored only where RAM lost more, and the manager follows the server's cache
in task order (docs/tokens.md, "llama-server's host-RAM prompt cache")."""

from __future__ import annotations

import pytest

from proxy.core.prefix_index import Prompt
from proxy.slots.manager import SlotManager
from proxy.slots.ram_cache import RamCache, RamSettings, settings_from_args
from proxy.slots.routing import RoutePolicy, SavedView, choose, eviction_cost
from proxy.slots.servers import ServerSlots
from proxy.slots.table import SlotTable
from tests.unit.slots.fakes import ListTokenizer, NoServer

NOW = 10_000.0
T = tuple(range(1, 7))  # the template's first tokens, shared by every conversation


def conv(base: int, n: int, turn: int = 1) -> Prompt:
    """A conversation: the template start, its own n tokens, then 100 per later turn."""
    return Prompt.of(T + tuple(range(base, base + n + 100 * (turn - 1))))


A1, A2, A3, A4 = (conv(1000, 600, t) for t in (1, 2, 3, 4))
B1, C1 = conv(5000, 600), conv(9000, 600)


def table(*held: Prompt | None, ram: tuple[Prompt, ...] = (), age: float = 60.0,
          **kw: object) -> SlotTable:  # fmt: skip
    """Slots holding ``held`` (None: empty), last used ``age`` seconds ago; RAM ``ram``."""
    cache = RamCache(RamSettings(**kw))  # type: ignore[arg-type]
    cache.entries = list(ram)
    out = SlotTable(0, len(held), ram=cache)
    for slot, prompt in enumerate(held):
        out.put(slot, prompt)
        out.states[slot].last_used = NOW - age if prompt is not None else 0.0
    return out


def route(t: SlotTable, prompt: Prompt, saved: SavedView | None = None,
          savable: bool = False):  # type: ignore[no-untyped-def]  # fmt: skip
    return choose(len(prompt), t.views(prompt, savable=savable), saved, RoutePolicy(), NOW)


def test_an_idle_slot_where_the_lookup_fires_beats_an_empty_pinned_slot() -> None:
    """Claim 1: pinned to an empty slot the server never looks in RAM (0 cached); pinned
    over another conversation it loads A's copy: the request goes there."""
    t = table(C1, None, ram=(A1,), age=3600)
    views = t.views(A2)
    assert [v.cached for v in views] == [len(A1), 0]
    r = route(t, A2)
    assert (r.slot, r.predicted) == (0, len(A1))


def test_without_ram_the_empty_slot_wins() -> None:
    t = table(C1, None, ram=(A1,), age=3600, cache_ram_mib=0)
    r = route(t, A2)
    assert (r.slot, r.predicted) == (1, 0)


def test_a_slot_ram_keeps_is_still_saved_to_disk_first() -> None:
    """The lookup fires on a slot the prompt keeps less than half of: the server saves it
    to RAM before loading, so giving it up costs only a load; but a RAM entry is consumed
    by the next load of it and dropped when RAM fills, so the disk copy is still made
    (without it, bench-trace's RAM-on run prefilled 17,283 tokens instead of 13,520)."""
    t = table(A1, B1, ram=(), age=5)
    r = route(t, C1, savable=True)
    assert all(v.unkept() == 0 for v in t.views(C1))
    assert (r.save_first, r.lost) == (True, len(A1) - len(T))


@pytest.mark.parametrize(
    ("ram", "unkept", "cost"),
    [
        ((), len(A2), 100),  # nothing in RAM: the 100 dropped tokens are lost
        ((A1,), 100, 100),  # RAM keeps A1 only: the same
        ((A2,), 0, 100 * RoutePolicy().restore_cost),  # an idle-slot save kept it all
    ],
)
def test_eviction_counts_only_what_ram_lost(ram: tuple[Prompt, ...], unkept: int,
                                            cost: float) -> None:  # fmt: skip
    """A prompt that keeps at least half the slot fires no lookup: the slot is not saved
    at dispatch, and what it drops is lost unless an earlier idle-slot save kept it (then
    it costs a RAM load, ``restore_cost`` of its prefill)."""
    t = table(A2, ram=ram, age=0.0)
    fork = Prompt.of((*A1.tokens, *(77,) * 50))
    view = t.views(fork)[0]
    assert view.unkept() == unkept
    assert eviction_cost(view, view.cached, RoutePolicy(), NOW) == pytest.approx(cost)


def test_a_restore_victim_ram_kept_goes_first() -> None:
    """A restore replaces a slot without saving it: the victim is one whose content an
    idle-slot save already put in RAM, not merely the least recently used."""
    t = table(A1, B1, ram=(B1,), age=5)
    t.states[1].last_used = NOW - 1  # B more recent than A
    saved = SavedView("c.bin", len(C1) - 1, 0)
    r = route(t, Prompt.of((*C1.tokens, 5)), saved)
    assert (r.restore, r.slot) == ("c.bin", 1)


def test_restore_only_what_ram_lost() -> None:
    """Claim 2: a file of A1 restored would block the lookup of A3's longer RAM copy."""
    t = table(C1, B1, ram=(A3,), age=3600)
    r = route(t, A4, SavedView("a1.bin", len(A1), 0))
    assert (r.restore, r.predicted) == (None, len(A3))
    t = table(C1, B1, ram=(), age=3600)
    assert route(t, A4, SavedView("a1.bin", len(A1), 0)).restore == "a1.bin"


SYS = tuple(range(100, 200))  # a system prompt two sessions of one client share
DATE1, DATE2 = tuple(range(300, 310)), tuple(range(400, 410))


def test_midnight_goes_where_ram_restores_its_own_session() -> None:
    """bench-trace, OpenClaw after midnight: the dated request shares the system prompt
    with another session's short slot (which keeps most of itself: no lookup there) and
    more with its own RAM entry (up to the date), loaded on a slot where the lookup
    fires."""
    s1 = Prompt.of(T + SYS + tuple(range(600, 640)) + DATE1 + tuple(range(700, 900)))
    s2 = Prompt.of(T + SYS + tuple(range(1600, 1650)))
    x = conv(9000, 300)
    dated = Prompt.of(T + SYS + tuple(range(600, 640)) + DATE2 + tuple(range(700, 910)))
    t = table(s2, x, ram=(s1,), age=120)
    r = route(t, dated)
    assert (r.slot, r.predicted) == (1, len(T + SYS) + 40)


def test_no_ram_model_for_sliding_window_or_recurrent_tables() -> None:
    on = RamSettings()
    dense = ServerSlots(0, NoServer(), ListTokenizer(), 2, 4096, False, ram=on)  # type: ignore[arg-type]
    swa = ServerSlots(0, NoServer(), ListTokenizer(), 2, 4096, False, swa_tail=512, ram=on)  # type: ignore[arg-type]
    rec = ServerSlots(0, NoServer(), ListTokenizer(), 2, 4096, False, swa_tail=512,  # type: ignore[arg-type]
                      recurrent=True, ram=on)  # fmt: skip
    off = ServerSlots(0, NoServer(), ListTokenizer(), 2, 4096, False,  # type: ignore[arg-type]
                      ram=RamSettings(cache_ram_mib=0))  # fmt: skip
    assert dense.table.ram is not None
    assert (swa.table.ram, rec.table.ram, off.table.ram) == (None, None, None)


def ram_manager(slots: int = 2) -> SlotManager:
    server = ServerSlots(0, NoServer(), ListTokenizer(), slots, 4096, False,  # type: ignore[arg-type]
                         ram=RamSettings())  # fmt: skip
    return SlotManager([server], RoutePolicy(), 1 << 30, clock=iter(range(1, 10_000)).__next__)


async def turn(m: SlotManager, prompt: Prompt) -> tuple[int, int]:
    lease = await m.acquire_prompts({0: prompt})
    m.release(lease, completed=True, generated=[], finish_reason="stop")
    return lease.route.slot, lease.route.predicted


async def test_the_manager_follows_the_servers_ram_in_task_order() -> None:
    """A, B on the two slots; C takes A's slot (A already in RAM from B's start, an
    idle-slot save); A's next turn is loaded from RAM onto a slot where the lookup fires,
    and the entry is consumed: B's copy remains, A's is gone."""
    m = ram_manager()
    ram = m.servers[0].table.ram
    assert ram is not None
    assert await turn(m, A1) == (0, 0)
    assert await turn(m, B1) == (1, 0)
    assert ram.entries == [A1]  # idle-slot save at B's start
    slot, _ = await turn(m, C1)
    assert await turn(m, A2) == (1 - slot, len(A1))
    assert A1 not in ram.entries  # a load consumes the entry


async def test_a_foreign_task_or_a_stale_server_clears_the_model() -> None:
    m = ram_manager()
    ram = m.servers[0].table.ram
    assert ram is not None
    ram.entries = [A1]
    m.mark_stale(0)
    assert ram.entries == []


@pytest.mark.parametrize(
    ("args", "mib", "similarity", "idle"),
    [
        ((), 8192, 0.1, True),
        (("--cache-ram", "1024"), 1024, 0.1, True),
        (("--cache-ram", "0"), 0, 0.1, True),
        (("-cram", "-1", "-sps", "0.5"), -1, 0.5, True),
        (("--cache-ram=2048", "--no-cache-idle-slots"), 2048, 0.1, False),
        (("-kvu",), 0, 0.1, True),  # unified KV clears idle slots: not modelled, off
        (("--threads", "4", "--cache-ram"), 8192, 0.1, True),  # no value: the default
    ],
)
def test_settings_from_llama_args(args: tuple[str, ...], mib: int, similarity: float,
                                  idle: bool) -> None:  # fmt: skip
    s = settings_from_args(args, 8192)
    assert (s.cache_ram_mib, s.similarity, s.idle_slots, s.n_ctx) == (mib, similarity, idle,
                                                                      8192)  # fmt: skip


def test_the_token_limit_alone_until_a_save_tells_the_size() -> None:
    ram = RamCache(settings_from_args((), 1000))
    for p in (A1, B1, C1):
        ram.save(p)
    assert ram.entries == [C1]  # 606 tokens each: the context size holds one
    ram.learn_size(606 * 23_000, 606)
    for p in (A1, B1):
        ram.save(p)
    assert ram.entries == [C1, A1, B1]  # 8 GiB at 23 kB a token: 373k tokens


async def test_an_unknown_ram_cache_is_counted_on_once_a_load_is_seen() -> None:
    """An external server's --cache-ram is not known (--upstream-cache-ram unset): the
    model follows it but predicts from the slots alone until a request's cached tokens
    show the load it modelled; a server without the cache never shows one."""
    m = ram_manager()
    ram = m.servers[0].table.ram
    assert ram is not None
    ram.settings = settings_from_args((), 8192, None)
    for p in (A1, B1, C1):
        await turn(m, p)
    lease = await m.acquire_prompts({0: A2})
    assert (lease.route.predicted, lease.ram_shared) == (len(T), len(A1))
    m.release(lease, completed=True, generated=[], finish_reason="stop", cached_actual=len(T))
    assert not ram.settings.confirmed  # --cache-ram 0: nothing loaded
    lease = await m.acquire_prompts({0: B1 if lease.route.slot else C1})
    m.release(lease, completed=True, generated=[], cached_actual=0, finish_reason="stop")
    ram.entries = [A1]
    ram.check(len(T), len(A1), len(A1))
    assert ram.settings.confirmed


def test_fewer_cached_than_counted_on_clears_the_model() -> None:
    ram = RamCache(RamSettings())
    ram.entries = [A1]
    ram.check(len(A1), len(A1), len(T))
    assert (ram.entries, ram.settings.confirmed) == ([], False)
