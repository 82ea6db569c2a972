"""The prefix index: exact longest-prefix matches from chained block hashes."""

from __future__ import annotations

import random
import tracemalloc
from array import array
from typing import Any

import pytest

from proxy.core.prefix_index import BLOCK, PrefixIndex, Prompt, chain_hashes, match_length


def toks(*runs: tuple[int, int]) -> list[int]:
    """(value, count) runs; distinct values make distinct blocks."""
    out: list[int] = []
    for value, count in runs:
        out.extend(range(value * 100_000, value * 100_000 + count))
    return out


def test_chain_hashes_cover_full_blocks_only() -> None:
    assert len(chain_hashes(list(range(BLOCK * 3 + 5)))) == 3
    assert chain_hashes(list(range(BLOCK - 1))) == []


def test_chain_depends_on_everything_before() -> None:
    a = chain_hashes(toks((1, BLOCK), (2, BLOCK)))
    b = chain_hashes(toks((3, BLOCK), (2, BLOCK)))
    assert a[1] != b[1]  # same second block, different first block


@pytest.mark.parametrize(
    ("held", "prompt", "expected"),
    [
        (toks((1, 500)), toks((1, 500), (2, 40)), 500),  # pure extension
        (toks((1, 500), (2, 40)), toks((1, 500)), 500),  # prompt shorter than held
        (toks((1, 300), (2, 200)), toks((1, 300), (3, 200)), 300),  # diverges mid-block
        (toks((1, 64)), toks((2, 64)), 0),  # nothing shared
        (toks((1, 10)), toks((1, 7)), 7),  # under one block: compared token by token
        ([], toks((1, 100)), 0),
    ],
)
def test_match_length_is_the_exact_common_prefix(
    held: list[int], prompt: list[int], expected: int
) -> None:
    assert match_length(Prompt.of(held), Prompt.of(prompt)) == expected


def test_match_length_agrees_with_a_plain_scan_on_random_prompts() -> None:
    rng = random.Random(7)
    for _ in range(200):
        base = [rng.randrange(50) for _ in range(rng.randrange(0, 600))]
        other = base[: rng.randrange(0, len(base) + 1)] + [rng.randrange(50) for _ in range(50)]
        plain = next(
            (i for i, (x, y) in enumerate(zip(base, other, strict=False)) if x != y),
            min(len(base), len(other)),
        )
        assert match_length(Prompt.of(base), Prompt.of(other)) == plain


def test_longest_finds_the_best_entry_among_many() -> None:
    index = PrefixIndex()
    for i in range(200):
        index.put(("s", i), Prompt.of(toks((i + 10, 256))))
    index.put("winner", Prompt.of(toks((42, 256), (7, 300))))
    key, n = index.longest(Prompt.of(toks((42, 256), (7, 200), (9, 50))))
    assert (key, n) == ("winner", 456)


def test_longest_sees_only_whole_blocks() -> None:
    index = PrefixIndex()
    index.put("short", Prompt.of(toks((1, BLOCK - 1))))
    assert index.longest(Prompt.of(toks((1, BLOCK - 1), (2, 5)))) == (None, 0)


def test_remove_and_replace_forget_the_old_prefix() -> None:
    index = PrefixIndex()
    index.put("a", Prompt.of(toks((1, 256))))
    index.put("a", Prompt.of(toks((2, 256))))
    assert index.longest(Prompt.of(toks((1, 256)))) == (None, 0)
    assert index.longest(Prompt.of(toks((2, 256))))[1] == 256
    index.remove("a")
    assert len(index) == 0
    assert index.longest(Prompt.of(toks((2, 256)))) == (None, 0)


@pytest.mark.parametrize(
    ("tokens", "like"),
    [
        ([*range(1000), *range(5000, 5100)], [range(1000)]),  # an append
        (list(range(1000)), [range(1000)]),  # the same
        ([*range(950), *range(7000, 7200)], [range(1000)]),  # diverges in the last blocks
        ([*range(300), *range(7000, 7700)], [range(1000)]),  # diverges far back
        (list(range(500)), [range(1000)]),  # shorter than the other
        (list(range(1000)), [range(64, 1000), [], range(640)]),  # several, one a prefix
        (list(range(10)), [range(1000)]),  # no full block
    ],
)
def test_hashes_reused_from_a_similar_prompt_equal_fresh_ones(tokens: list[int],
                                                              like: list[Any]) -> None:  # fmt: skip
    others = [Prompt.of(list(t)) for t in like]
    assert Prompt.of(tokens, others) == Prompt.of(tokens)


@pytest.mark.parametrize("given", [[5, 6, 7], (5, 6, 7), range(5, 8)])
def test_a_prompt_always_holds_an_int_array(given: Any) -> None:
    """An array never equals a tuple or a list, so every prompt holds the same kind: two
    prompts of equal tokens are equal however they were built, and hash alike."""
    from array import array

    made = [Prompt.of(given), Prompt(given), Prompt.of(array("i", [5, 6, 7]))]
    for prompt in made:
        assert isinstance(prompt.tokens, array) and prompt.tokens.typecode == "i"
    assert made[0] == made[2] and hash(made[0]) == hash(made[2])
    assert list(made[1].tokens) == [5, 6, 7]


def test_an_appended_prompt_keeps_the_slots_hashes_without_copying_tokens() -> None:
    """``Prompt.of`` compares a prompt with the slot's in place: slicing two arrays of 32k
    tokens wrote 256 kB per request, fresh pages of the heap after a trim (0.6 ms on cold
    caches in ``bench/own_time.py``)."""
    base = Prompt.of(array("i", range(32_000)))
    longer = array("i", range(32_100))
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        got = Prompt.of(longer, [base])
        peak = tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
    assert got.hashes[: len(base.hashes)] == base.hashes and len(got.hashes) == 32_100 // 64
    assert peak < 64_000, peak
