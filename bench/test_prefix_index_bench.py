"""`make bench-index`: longest-prefix lookup time with 1k, 10k and 100k stored prefixes
(pytest-benchmark; it must not grow with the number of prefixes)."""

from __future__ import annotations

import random

import pytest

from proxy.core.prefix_index import BLOCK, PrefixIndex, Prompt

SYSTEM = list(range(1, 1 + 4 * BLOCK))  # a shared system prompt: the worst case for a trie


def stored(n: int) -> tuple[PrefixIndex, Prompt]:
    rng = random.Random(n)
    index = PrefixIndex()
    for i in range(n):
        tail = [rng.randrange(256) for _ in range(2 * BLOCK)]
        index.put(i, Prompt.of(SYSTEM + tail))
    probe = SYSTEM + [rng.randrange(256) for _ in range(60 * BLOCK)]
    return index, Prompt.of(probe)


@pytest.mark.parametrize("n", [1_000, 10_000, 100_000])
def test_longest_match(benchmark, n: int) -> None:  # type: ignore[no-untyped-def]
    index, probe = stored(n)
    key, length = benchmark(index.longest, probe)
    assert key is not None and length >= len(SYSTEM)
