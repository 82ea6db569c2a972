"""The slots of one upstream (``ServerSlots``) and one request's claim on a slot (``Lease``),
with the miss cause a finished lease explains.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from proxy.backends.kinds import backend_for
from proxy.backends.ollama_keep import ContextMemory
from proxy.backends.upstream import Upstream
from proxy.core.cause import MissCause
from proxy.core.prefix_index import BLOCK, Prompt
from proxy.slots.ram_cache import RamCache, RamSettings
from proxy.slots.read_back import ReadBack
from proxy.slots.routing import Route
from proxy.slots.table import DIVERGE_SLACK, SlotTable
from proxy.tokens import Tokenizer


@dataclass
class ServerSlots:
    """The slots of one upstream (ollama: one per instance) and how to tokenize for it."""

    index: int
    upstream: Upstream
    tokenizer: Tokenizer
    n_slots: int
    n_ctx: int | None
    can_save: bool
    slot_dir: Path | None = None  # where its save files are, when they are on this host
    synced: float | None = None  # when /slots was last read
    read_for: int = 0  # the last request admitted when that read started (``look_ahead``)
    # A request kvproxy did not route went to it (``SlotManager.mark_stale``): /slots is
    # read before the next routing, and no slot is saved until it has been.
    stale: bool = False
    sync_task: asyncio.Task[None] | None = field(default=None, repr=False)
    max_inflight: int = 0  # requests sent to it at once; 0: 4 per slot
    swa_tail: int | None = None  # sliding-window model: see slot_table.reusable
    swa_window: int | None = None
    recurrent: bool = False  # recurrent or hybrid model: see slot_table.reusable
    # The server's host-RAM prompt cache (--cache-ram), modelled for dense models only: a
    # sliding-window or recurrent slot loaded from RAM also needs a checkpoint.
    ram: RamSettings | None = None
    # what reading a slot back costs here, from the server's own timings
    read_back: ReadBack = field(default_factory=ReadBack)
    # ollama: the context each model runs at (proxy/ollama_keep.py)
    ollama_ctx: ContextMemory = field(default_factory=ContextMemory)
    table: SlotTable = field(init=False)
    gate: asyncio.Semaphore = field(init=False, repr=False)
    prep: list[asyncio.Lock] = field(init=False, repr=False)  # one slot's save/restore I/O

    def __post_init__(self) -> None:
        self.table = SlotTable(self.index, self.n_slots, self.swa_tail,
                               self.tokenizer.user_marker, self.swa_window,
                               self.recurrent, self._ram_cache())  # fmt: skip
        self.gate = asyncio.Semaphore(self.max_inflight or 4 * max(1, self.n_slots))
        self.prep = [asyncio.Lock() for _ in range(self.n_slots)]

    def _ram_cache(self) -> RamCache | None:
        dense = self.swa_tail is None and not self.recurrent
        return RamCache(self.ram) if self.ram is not None and self.ram.enabled and dense else None

    @property
    def pins(self) -> bool:
        return backend_for(self.upstream.kind).pins


@dataclass
class Lease:
    """One request's claim on a slot, from routing until its response is done."""

    server: ServerSlots
    route: Route
    prompt: Prompt | None
    estimated: bool
    known_best: int = 0  # longest prefix of this prompt anything ever held (live, saved, evicted)
    known_from: str = "none"
    known_held: int = 0  # how long that holder was, for "diverged at token N"
    restored: bool = False
    released: bool = False
    queued_ms: float = 0.0  # time spent in kvproxy's queue waiting for a free slot
    owner: str | None = None  # the principal sending it (PUBLIC: a warm-up)
    # The slot holds another principal's content: the server must reuse none of it
    # (``cache_prompt: false``), or its cached-token figures would reveal how far this
    # prompt matches that content.
    isolated: bool = False
    # What the server's RAM cache, as modelled at dispatch, lets it reuse (None: no model).
    ram_shared: int | None = None

    @property
    def slot_label(self) -> str:
        return f"{self.route.server}/{self.route.slot}"


def miss_cause(lease: Lease, cached: int | None, prompt_tokens: int | None) -> MissCause | None:
    """Why a request reused less than it could have; None for a hit.

    - ``cold``: nothing ever held shares even one block (``BLOCK`` tokens) with the prompt;
    - ``evicted``: a longer prefix had been held (overwritten, or saved and not restored);
    - ``diverged`` at token N: the best holder held more than this prompt shares with it
      (the client changed its history at N), or the server reused less than predicted.
    """
    if cached is None or prompt_tokens is None:
        return None
    if lease.known_best < BLOCK:
        return MissCause("cold")
    if cached < min(lease.known_best, prompt_tokens - 1):
        if lease.known_from == "evicted" or (lease.known_from == "saved" and not lease.restored):
            return MissCause("evicted")
        return MissCause("diverged", token=cached)
    if lease.known_held > lease.known_best + DIVERGE_SLACK:
        return MissCause("diverged", token=lease.known_best)
    return None
