"""llama-server's host-RAM prompt cache (``--cache-ram``), modelled: state and rules, no I/O.

The server saves a slot's content to RAM when a completion task is given the slot and,
with ``--cache-idle-slots`` (the default), every idle slot's content each time a task
starts; it loads the best entry back into the slot a task lands on only under the
conditions of ``lookup_fires``, and a load consumes the entry. Read in
tools/server/server-context.cpp (``get_available_slot``) and server-task.cpp
(``server_prompt_cache``), measured in docs/tokens.md ("llama-server's host-RAM prompt
cache"). Dense attention only: a sliding-window or recurrent slot loaded from RAM also
needs a usable checkpoint (``table.reusable``), which this model does not follow.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from proxy.core.prefix_index import Prompt, match_length

MIB = 1024 * 1024

# llama-server's defaults (common/common.h).
DEFAULT_CACHE_RAM_MIB = 8192  # --cache-ram: -1 no byte limit, 0 off
DEFAULT_SIMILARITY = 0.1  # --slot-prompt-similarity
# server_prompt_cache::load: an entry that keeps less than this share of its own tokens is
# never loaded ("don't trash large prompts").
MIN_ENTRY_KEEP = 0.25
# get_available_slot: a prompt that keeps less than this share of its slot looks in RAM.
LOOKUP_KEEP = 0.5


def lookup_fires(held: int, shared: int, prompt_len: int, pinned: bool,
                 similarity: float = DEFAULT_SIMILARITY) -> bool:  # fmt: skip
    """Does the server look in RAM for a task that lands on a slot holding ``held``
    tokens, ``shared`` of them a prefix of the ``prompt_len``-token prompt? Pinned
    (``id_slot``): never on an empty slot (``f_keep`` is 0/0, NaN) nor with similarity 0;
    otherwise when the prompt keeps less than half the slot (a similarity at or below the
    threshold counts as keeping nothing). Unpinned, the server picked the slot: by
    similarity when one shares more than the threshold (the same half rule), else the
    least recently used, which always looks."""
    if pinned and (held == 0 or similarity == 0):
        return False
    sim = shared / prompt_len if prompt_len else 0.0
    if similarity == 0 or (not pinned and sim <= similarity):
        return True  # unpinned: chosen by LRU
    keep = shared / held if sim > similarity and held else 0.0
    return keep < LOOKUP_KEEP


@dataclass(frozen=True)
class RamSettings:
    """How the server's RAM cache is configured (0 MiB: off)."""

    cache_ram_mib: int = DEFAULT_CACHE_RAM_MIB
    n_ctx: int = 0  # the whole --ctx-size: the cache's token limit (0: none)
    # A slot state's size per token (saved files tell); 0: not known yet, when only the
    # token limit is applied (the server's is at least that: the model under-counts).
    bytes_per_token: float = 1.0
    similarity: float = DEFAULT_SIMILARITY
    idle_slots: bool = True  # --cache-idle-slots
    # The server is known to run it (the embedded server's arguments, or said); else it is
    # followed but counted on only once a request's cached tokens show a load (``check``).
    confirmed: bool = True

    @property
    def enabled(self) -> bool:
        return self.cache_ram_mib != 0

    @property
    def limit_bytes(self) -> int:
        """0: no byte limit (``--cache-ram -1``)."""
        return max(0, self.cache_ram_mib) * MIB


class RamCache:
    """The entries the server keeps in RAM, oldest first, with its size limits."""

    def __init__(self, settings: RamSettings) -> None:
        self.settings = settings
        self.entries: list[Prompt] = []

    def _bytes(self, n_tokens: int) -> float:
        return n_tokens * self.settings.bytes_per_token

    def size(self) -> float:
        return self._bytes(self.n_tokens())

    def n_tokens(self) -> int:
        return sum(len(e) for e in self.entries)

    def save(self, held: Prompt | None) -> bool:
        """A slot's content goes to RAM (``alloc`` then ``update``): skipped when empty,
        when an entry already starts with it, or when alone it exceeds the limit; entries
        it extends are dropped, then the oldest while over the limits."""
        if not self.settings.enabled or held is None or not held.tokens:
            return False
        if any(match_length(e, held) == len(held) for e in self.entries):
            return False
        limit = self.settings.limit_bytes
        new = self._bytes(len(held))
        if limit and new > limit:
            return False
        self.entries = [e for e in self.entries if match_length(e, held) != len(e)]
        while limit and self.entries and self.size() + new > limit:
            self.entries.pop(0)
        self.entries.append(held)
        self.update()
        return True

    def update(self) -> None:
        """``server_prompt_cache::update``: the byte limit, then the token limit (the
        context size, raised to what the byte limit holds at the current size per token)."""
        limit = self.settings.limit_bytes
        while limit and self.entries and self.size() > limit:
            self.entries.pop(0)
        n_ctx = self.settings.n_ctx
        if not n_ctx:
            return
        per_token = max(1.0, self.size() / max(1, self.n_tokens()))
        known = self.settings.bytes_per_token > 0
        cap = max(n_ctx, math.floor(limit / per_token)) if limit and known else n_ctx
        while self.entries and self.n_tokens() > cap:
            self.entries.pop(0)

    def best(self, held: Prompt | None, prompt: Prompt) -> tuple[int | None, int]:
        """The entry ``server_prompt_cache::load`` would put into a slot holding ``held``
        for ``prompt``, and the tokens then shared with it: (None, what the slot shares)
        when no entry beats the slot. Oldest first, an entry must keep a quarter of its
        own tokens and beat the best so far on both shares."""
        base = match_length(held, prompt) if held is not None and held.tokens else 0
        keep_best = base / len(held) if held is not None and held.tokens else -1.0
        sim_best = base / len(prompt) if prompt.tokens else 0.0
        found, shared = None, base
        for i, entry in enumerate(self.entries):
            n = match_length(entry, prompt)
            keep, sim = n / len(entry), (n / len(prompt) if prompt.tokens else 0.0)
            if keep < MIN_ENTRY_KEEP:
                continue
            if keep_best < keep and sim_best < sim:
                keep_best, sim_best, found, shared = keep, sim, i, n
        return found, shared

    def predict(self, held: Prompt | None, prompt: Prompt, pinned: bool = True) -> int:
        """Tokens the server shares with ``prompt`` on a slot holding ``held`` once its RAM
        cache had its say (before ``routing.usable``'s one-token rule)."""
        base = match_length(held, prompt) if held is not None and held.tokens else 0
        if not self.settings.enabled or not lookup_fires(
            len(held) if held is not None else 0, base, len(prompt), pinned,
            self.settings.similarity,
        ):  # fmt: skip
            return base
        probe = RamCache(self.settings)
        probe.entries = list(self.entries)
        probe.save(held)  # the slot goes to RAM first (its limits may drop old entries)
        return probe.best(held, prompt)[1]

    def dispatch(self, held: Prompt | None, prompt: Prompt, pinned: bool = True,
                 idle: Iterable[Prompt | None] = ()) -> tuple[int, Prompt | None]:  # fmt: skip
        """A task for ``prompt`` lands on a slot holding ``held``: the slot's content is
        saved and the best entry loaded (consumed) when ``lookup_fires``; then, with
        ``idle_slots``, the contents of the other idle slots (``idle``) are saved. Returns
        the tokens shared and what the slot holds before the prompt is processed."""
        base = match_length(held, prompt) if held is not None and held.tokens else 0
        shared, holds = base, held
        if self.settings.enabled and lookup_fires(
            len(held) if held is not None else 0, base, len(prompt), pinned,
            self.settings.similarity,
        ):  # fmt: skip
            self.save(held)
            found, n = self.best(held, prompt)
            if found is not None:
                holds, shared = self.entries.pop(found), n
            self.update()
        if self.settings.enabled and self.settings.idle_slots:
            for other in idle:
                self.save(other)
        return shared, holds

    def lost(self, held: Prompt | None) -> int:
        """Tokens of ``held`` no RAM entry keeps (what giving its slot up would lose, for a
        server with room in RAM: the slot is saved before it is overwritten)."""
        if held is None or not held.tokens:
            return 0
        kept = max((match_length(e, held) for e in self.entries), default=0)
        return len(held) - kept

    def learn_size(self, n_written: object, n_saved: object) -> None:
        """A slot save's answer (``n_written`` bytes for ``n_saved`` tokens) tells the size
        of a slot state per token, and so how many tokens the byte limit holds."""
        if isinstance(n_written, int) and isinstance(n_saved, int) and n_saved > 0:
            self.settings = replace(self.settings, bytes_per_token=n_written / n_saved)
            self.update()

    def check(self, predicted: int, modelled: int, actual: int) -> None:
        """A request's cached tokens (``actual``) against the prediction and what the model
        says the server shared (``modelled``, the load included): a load seen confirms the
        cache; fewer than predicted after counting on it, the model is wrong: cleared, and
        counted on again only once a load is seen."""
        if not self.settings.confirmed and modelled > predicted and actual >= modelled:
            self.settings = replace(self.settings, confirmed=True)
        elif self.settings.confirmed and actual < predicted:
            self.clear()
            self.settings = replace(self.settings, confirmed=False)

    def clear(self) -> None:
        """The server's cache is no longer known (a restart, another client's task): the
        model forgets it, so predictions fall back to the slots alone (under-count)."""
        self.entries.clear()

    def view(self, held: Prompt | None, prompt: Prompt | None, cached: int,
             unsaved: int) -> tuple[int, int, int]:  # fmt: skip
        """One slot for the router: the tokens cached (the slot's own ``cached``, or a
        loaded entry's), and of the ``unsaved`` tokens (what no file holds) those RAM
        keeps if the request lands on the slot (all when the lookup fires: the slot is
        saved first) and if a restore replaces it (what an entry already keeps)."""
        counted = self.settings.enabled and self.settings.confirmed
        if held is None or not held.tokens or not counted:
            return cached, 0, 0
        copied = max(0, unsaved - self.lost(held))
        if prompt is None:
            return cached, copied, copied
        base = match_length(held, prompt)
        fires = lookup_fires(len(held), base, len(prompt), True, self.settings.similarity)
        return max(cached, self.predict(held, prompt)), unsaved if fires else copied, copied


def settings_from_args(args: Sequence[str], n_ctx: int,
                       cache_ram_mib: int | None = DEFAULT_CACHE_RAM_MIB,
                       ) -> RamSettings:  # fmt: skip
    """The RAM cache a llama-server started with ``args`` has (the embedded server's
    --llama-args), ``cache_ram_mib`` unless they say (None: not known, the server's
    default until a request shows otherwise); unified KV (``-kvu``), which clears idle
    slots after saving them, is not modelled: off."""
    known = cache_ram_mib is not None
    mib = DEFAULT_CACHE_RAM_MIB if cache_ram_mib is None else cache_ram_mib
    values = {"cache_ram_mib": mib, "similarity": DEFAULT_SIMILARITY}
    idle, unified = True, False
    flags = {"-cram": "cache_ram_mib", "--cache-ram": "cache_ram_mib",
             "-sps": "similarity", "--slot-prompt-similarity": "similarity"}  # fmt: skip
    for i, arg in enumerate(args):
        name, _, inline = arg.partition("=")
        if name in flags:
            raw = inline or (args[i + 1] if i + 1 < len(args) else "")
            try:
                values[flags[name]] = float(raw)
            except ValueError:
                continue
        idle = {"--no-cache-idle-slots": False, "--cache-idle-slots": True}.get(name, idle)
        unified = {"-kvu": True, "--kv-unified": True, "-no-kvu": False,
                   "--no-kv-unified": False}.get(name, unified)  # fmt: skip
    mib = 0 if unified else int(values["cache_ram_mib"])
    return RamSettings(cache_ram_mib=mib, n_ctx=n_ctx, bytes_per_token=0.0,
                       similarity=values["similarity"], idle_slots=idle,
                       confirmed=known)  # fmt: skip
