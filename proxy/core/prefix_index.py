"""What token prefixes are held where, found by chained block hashes (sans-IO).

A prefix is cut into blocks of ``BLOCK`` tokens; block i's hash chains the hash of block
i-1, so equal hashes at depth i mean equal tokens up to the end of block i. A dict maps
each chain hash to the entries that hold it. The longest stored match of a prompt is then
a binary search over the prompt's own chain (membership is monotone in depth) and an exact
token comparison inside one block: the cost depends on the prompt's length, not on how many
prefixes are stored.
"""

from __future__ import annotations

from array import array
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field

import xxhash

BLOCK = 64
# Candidates compared token by token inside the last partial block of a longest match.
REFINE_CANDIDATES = 8


def chain_hashes(tokens: Sequence[int], block: int = BLOCK, start: int = 0,
                 seed: int = 0) -> list[int]:  # fmt: skip
    """The chained hash of every full block of ``tokens`` from block ``start`` on, the
    first chained to ``seed`` (the hash of the block before it)."""
    out: list[int] = []
    prev = seed
    full = len(tokens) - len(tokens) % block
    part = tokens[start * block : full]
    data = (part if isinstance(part, array) else array("i", part)).tobytes()
    step = block * 4
    for at in range(0, len(data), step):
        prev = xxhash.xxh3_64_intdigest(data[at : at + step], seed=prev)
        out.append(prev)
    return out


def common_prefix(a: Sequence[int], b: Sequence[int], start: int = 0) -> int:
    """Length of the common prefix of ``a`` and ``b``, given that it is at least ``start``."""
    n = min(len(a), len(b))
    i = start
    while i < n and a[i] == b[i]:
        i += 1
    return i


def as_tokens(tokens: Iterable[int]) -> array[int]:
    """Tokens as a C array of 32-bit ints: slicing, comparing and hashing 32k of them are
    memory copies, where a tuple touches 32k scattered int objects (cold after a prefill)."""
    return tokens if isinstance(tokens, array) and tokens.typecode == "i" else array("i", tokens)


@dataclass(frozen=True)
class Prompt:
    """A prompt's tokens with their chain hashes, computed once per request. The tokens
    are always an ``array('i')`` (``as_tokens``): an array never equals a tuple or a list,
    so no prompt may hold another kind."""

    tokens: array[int]
    hashes: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        if not isinstance(self.tokens, array):
            object.__setattr__(self, "tokens", as_tokens(self.tokens))

    def __hash__(self) -> int:  # an array is unhashable; equal tokens mean equal hashes
        return hash((len(self.tokens), self.hashes))

    @classmethod
    def of(cls, tokens: Iterable[int], like: Iterable[Prompt] = ()) -> Prompt:
        """``tokens`` with their chain hashes; the leading blocks they share whole with one
        of ``like`` (the previous prompt of the same slot, say) keep that one's hashes, so
        an appended turn hashes only its new blocks."""
        toks = as_tokens(tokens)
        shared, base = 0, ()
        for other in like:
            n = leading_blocks(toks, other)
            if n > shared:
                shared, base = n, other.hashes
        seed = base[shared - 1] if shared else 0
        return cls(toks, (*base[:shared], *chain_hashes(toks, start=shared, seed=seed)))

    def __len__(self) -> int:
        return len(self.tokens)


def leading_blocks(tokens: array[int], other: Prompt, tries: int = 3) -> int:
    """How many of ``other``'s hashed blocks ``tokens`` begins with, when that is all of
    them or all but the last one or two (the usual case: a prompt extending another, or
    diverging where the other's reply ends; one comparison each); else 0 (hashed afresh)."""
    top = min(len(other.hashes), len(tokens) // BLOCK)
    with memoryview(tokens) as mine, memoryview(other.tokens) as theirs:
        for n in range(top, max(0, top - tries), -1):
            end = n * BLOCK
            # compared in place: slicing two arrays of 32k tokens writes 256 kB, fresh
            # pages of the heap after a trim (bench/own_time.py: 0.6 ms on cold caches)
            if mine[end - BLOCK : end] == theirs[end - BLOCK : end] and (
                    mine[:end] == theirs[:end]):  # fmt: skip
                return n
    return 0


def shared_blocks(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading chain hashes ``a`` and ``b`` share (chains are prefix-closed)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[mid - 1] == b[mid - 1]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def match_length(held: Prompt, prompt: Prompt) -> int:
    """Exact common token prefix of two prompts, in O(log blocks + BLOCK)."""
    blocks = shared_blocks(held.hashes, prompt.hashes)
    return common_prefix(held.tokens, prompt.tokens, blocks * BLOCK)


class PrefixIndex:
    """Token prefixes under caller-chosen keys (a live slot, a saved file, a ghost)."""

    def __init__(self) -> None:
        self._entries: dict[Hashable, Prompt] = {}
        self._by_hash: dict[int, dict[Hashable, None]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def get(self, key: Hashable) -> Prompt | None:
        return self._entries.get(key)

    def keys(self) -> list[Hashable]:
        return list(self._entries)

    def put(self, key: Hashable, prompt: Prompt) -> None:
        self.remove(key)
        self._entries[key] = prompt
        for h in prompt.hashes:
            self._by_hash.setdefault(h, {})[key] = None

    def remove(self, key: Hashable) -> Prompt | None:
        old = self._entries.pop(key, None)
        if old is not None:
            for h in old.hashes:
                holders = self._by_hash.get(h)
                if holders is not None:
                    holders.pop(key, None)
                    if not holders:
                        del self._by_hash[h]
        return old

    def match(self, key: Hashable, prompt: Prompt) -> int:
        held = self._entries.get(key)
        return 0 if held is None else match_length(held, prompt)

    def prefixes_of(self, prompt: Prompt) -> list[tuple[Hashable, Prompt]]:
        """The entries that are whole prefixes of ``prompt`` (a scan: for the few saved
        files of a recurrent model, which resume only a file the prompt extends)."""
        n = len(prompt)
        return [(key, entry) for key, entry in self._entries.items()
                if len(entry) <= n and match_length(entry, prompt) == len(entry)]  # fmt: skip

    def longest(self, prompt: Prompt) -> tuple[Hashable | None, int]:
        """The stored entry sharing the longest token prefix with ``prompt``, and its length.

        Only whole blocks are indexed, so a match shorter than one block is found only when
        some entry is compared directly (``match``); such short matches are not worth a
        restore anyway.
        """
        hashes = prompt.hashes
        lo, hi = 0, len(hashes)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if hashes[mid - 1] in self._by_hash:
                lo = mid
            else:
                hi = mid - 1
        if lo == 0:
            return None, 0
        holders = self._by_hash[hashes[lo - 1]]
        best_key: Hashable | None = None
        best = -1
        # The newest holders first: dicts keep insertion order.
        for i, key in enumerate(reversed(holders)):
            if i >= REFINE_CANDIDATES:
                break
            n = common_prefix(self._entries[key].tokens, prompt.tokens, lo * BLOCK)
            if n > best:
                best_key, best = key, n
        return best_key, best
