"""llama-server's host-RAM prompt cache, modelled: each rule as a table, the measured cases
of docs/tokens.md ("llama-server's host-RAM prompt cache") among the rows."""

from __future__ import annotations

import pytest

from proxy.core.prefix_index import Prompt
from proxy.slots.ram_cache import RamCache, RamSettings, lookup_fires

T = tuple(range(1, 7))  # the template's first tokens, shared by every conversation


def conv(base: int, n: int, turn: int = 1) -> Prompt:
    """A conversation: the shared template start, its own n tokens, then 10 per later turn."""
    return Prompt.of(T + tuple(range(base, base + n + 10 * (turn - 1))))


A1, A2, A3, A4 = (conv(1000, 90, t) for t in (1, 2, 3, 4))
B1, B2, C1 = conv(2000, 90), conv(2000, 90, 2), conv(3000, 90)
SYS = tuple(range(50, 75))  # a default system prompt short conversations share
D, F = Prompt.of(T + SYS + (900, 901, 902)), Prompt.of(T + SYS + (950, 951))


def cache(*entries: Prompt, **kw: object) -> RamCache:
    ram = RamCache(RamSettings(**kw))  # type: ignore[arg-type]
    ram.entries = list(entries)
    return ram


@pytest.mark.parametrize(
    ("held", "shared", "prompt_len", "pinned", "similarity", "fires"),
    [
        (0, 0, 812, True, 0.1, False),  # pinned to an empty slot: f_keep 0/0 (measured: 0)
        (0, 0, 812, False, 0.1, True),  # unpinned: the LRU slot looks (measured: 789)
        (815, 6, 814, True, 0.1, True),  # pinned over another conversation (measured: 791)
        (792, 792, 858, True, 0.1, False),  # a restored file the prompt extends (789)
        (794, 5, 37, False, 0.1, True),  # similarity 0.135 > 0.1, f_keep 0.006: looks
        (100, 60, 1000, True, 0.1, True),  # similarity 0.06: counts as keeping nothing
        (100, 60, 200, True, 0.1, False),  # keeps 60% of the slot
        (100, 40, 200, True, 0.1, True),  # keeps 40%
        (800, 0, 800, True, 0.0, False),  # --slot-prompt-similarity 0: pinned never looks
        (800, 700, 800, False, 0.0, True),  # ... unpinned always (LRU)
    ],
)
def test_lookup_fires(held: int, shared: int, prompt_len: int, pinned: bool,
                      similarity: float, fires: bool) -> None:  # fmt: skip
    assert lookup_fires(held, shared, prompt_len, pinned, similarity) is fires


@pytest.mark.parametrize(
    ("entries", "held", "prompt", "pinned", "predicted"),
    [
        ((A1,), None, A2, True, 0),  # claim 1: pinned to an empty slot, RAM not consulted
        ((A1,), None, A2, False, len(A1)),  # ... unpinned, the RAM copy is loaded
        ((A1,), C1, A2, True, len(A1)),  # pinned over another conversation: loaded
        ((A3,), A1, A4, True, len(A1)),  # claim 2: a restored shorter file blocks it
        ((A3,), C1, A4, True, len(A3)),  # ... without the restore: the RAM copy
        ((B1,), C1, A2, True, len(T)),  # nothing of A in RAM: the template start
        ((D,), A1, F, False, len(T) + len(SYS)),  # claim 4: an unrelated conversation
        ((A1,), None, A2, True, 0),
        # oldest first, both shares strictly higher: with equal f_keep (1.0) the older
        # entry wins even when a newer one shares more
        ((A1, A2), C1, A3, True, len(A1)),
        ((A2, A1), C1, A3, True, len(A2)),
        ((conv(1000, 300),), C1, A2, True, len(A2)),  # keeps 106 of 306: loaded
        ((conv(1000, 500),), C1, A2, True, len(T)),  # keeps 106 of 506 (< 1/4): skipped
    ],
)
def test_predict(entries: tuple[Prompt, ...], held: Prompt | None, prompt: Prompt,
                 pinned: bool, predicted: int) -> None:  # fmt: skip
    ram = cache(*entries)
    assert ram.predict(held, prompt, pinned) == predicted
    assert ram.entries == list(entries)  # a prediction changes nothing


def test_off_predicts_the_slot_alone() -> None:
    assert cache(A1, cache_ram_mib=0).predict(C1, A2) == len(T)


def test_load_consumes_the_entry() -> None:
    """Claim 3: A loaded into slot 1 (holding C); a second request for A finds only the
    template start (measured: 789, then 6)."""
    ram = cache(A1, B1)
    shared, holds = ram.dispatch(C1, A2)
    assert (shared, holds) == (len(A1), A1)
    assert ram.entries == [B1, C1]  # A consumed, C saved before the load
    assert ram.predict(B1, A2) == len(T)


def test_dispatch_saves_idle_slots() -> None:
    """--cache-idle-slots: every other idle slot's content goes to RAM at a task start."""
    ram = cache()
    assert ram.dispatch(None, A1, idle=[B1, None]) == (0, None)
    assert ram.entries == [B1]
    ram = cache(idle_slots=False)
    ram.dispatch(None, A1, idle=[B1])
    assert ram.entries == []


def test_dispatch_without_lookup_keeps_the_slot() -> None:
    ram = cache(A3)
    assert ram.dispatch(A1, A4) == (len(A1), A1)
    assert ram.entries == [A3]


@pytest.mark.parametrize(
    ("entries", "held", "after"),
    [
        ((), A1, [A1]),
        ((A2,), A1, [A2]),  # an entry already starts with it: skipped
        ((A1,), A2, [A2]),  # entries it extends are dropped
        ((B1,), A1, [B1, A1]),
        ((), None, []),
        ((), Prompt.of(()), []),
    ],
)
def test_save(entries: tuple[Prompt, ...], held: Prompt | None, after: list[Prompt]) -> None:
    ram = cache(*entries)
    ram.save(held)
    assert ram.entries == after


# 1 MiB at 10 KiB per token: 102 tokens fit.
TOKEN = 10 * 1024


@pytest.mark.parametrize(
    ("entries", "held", "kw", "after"),
    [
        ((A1,), B1, {}, [B1]),  # over the byte limit: the oldest goes
        ((), conv(1000, 200), {}, []),  # alone over the limit: not cached
        ((A1,), B1, {"cache_ram_mib": 2}, [A1, B1]),
        ((A1, B1), C1, {"cache_ram_mib": -1, "n_ctx": 200}, [B1, C1]),  # -1: context limit
        ((A1, B1), C1, {"cache_ram_mib": -1, "n_ctx": 0}, [A1, B1, C1]),  # no limit at all
        ((A1,), B1, {"cache_ram_mib": 2, "n_ctx": 100}, [A1, B1]),  # raised to what fits
    ],
)
def test_limits(entries: tuple[Prompt, ...], held: Prompt, kw: dict[str, int],
                after: list[Prompt]) -> None:  # fmt: skip
    ram = cache(*entries, **{"cache_ram_mib": 1, "bytes_per_token": TOKEN, **kw})
    ram.save(held)
    assert ram.entries == after


@pytest.mark.parametrize(
    ("entries", "held", "lost"),
    [
        ((A2,), A2, 0),
        ((A1,), A2, len(A2) - len(A1)),
        ((B1,), A2, len(A2) - len(T)),
        ((), None, 0),
    ],
)
def test_lost(entries: tuple[Prompt, ...], held: Prompt | None, lost: int) -> None:
    assert cache(*entries).lost(held) == lost
