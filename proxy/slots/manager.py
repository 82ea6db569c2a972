"""The async shell around the slot table: routing, slot saves and restores, mirroring.

The decisions are pure: ``routing.choose`` picks the slot, and ``proxy.slot_table`` keeps
what every slot holds and which saved files exist, returning what must happen. This module
performs it: llama-server's ``/slots`` actions and reconciliation, deleting superseded or
evicted files, tokenizing per upstream, and mirroring the state to LMDB.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from array import array
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from proxy.backends.kinds import backend_for
from proxy.backends.ollama_keep import ContextMemory
from proxy.backends.upstream import Upstream
from proxy.core.cause import MissCause
from proxy.core.conversation import Conversation
from proxy.core.errors import Overloaded, ProxyError
from proxy.core.log import get_logger
from proxy.core.prefix_index import BLOCK, Prompt
from proxy.slots.routing import Route, RoutePolicy, choose
from proxy.slots.table import (
    DIVERGE_SLACK,
    PUBLIC,
    Drop,
    Ghosts,
    Outcome,
    SavedCatalog,
    SavedFile,
    SlotTable,
    held_after,
    known_best,
    save_name,
)
from proxy.tokens import Tokenizer

log = get_logger("kvproxy.slots")

# Seconds to wait for llama-server's /slots before routing without the check.
SYNC_TIMEOUT = 0.5
SYNC_INTERVAL = 1.0


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
    sync_task: asyncio.Task[None] | None = field(default=None, repr=False)
    max_inflight: int = 0  # requests sent to it at once; 0: 4 per slot
    swa_tail: int | None = None  # sliding-window model: see slot_table.reusable
    swa_window: int | None = None
    recurrent: bool = False  # recurrent or hybrid model: see slot_table.reusable
    # ollama: the context each model runs at (proxy/ollama_keep.py)
    ollama_ctx: ContextMemory = field(default_factory=ContextMemory)
    table: SlotTable = field(init=False)
    gate: asyncio.Semaphore = field(init=False, repr=False)
    prep: list[asyncio.Lock] = field(init=False, repr=False)  # one slot's save/restore I/O

    def __post_init__(self) -> None:
        self.table = SlotTable(self.index, self.n_slots, self.swa_tail,
                               self.tokenizer.user_marker, self.swa_window,
                               self.recurrent)  # fmt: skip
        self.gate = asyncio.Semaphore(self.max_inflight or 4 * max(1, self.n_slots))
        self.prep = [asyncio.Lock() for _ in range(self.n_slots)]

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

    @property
    def slot_label(self) -> str:
        return f"{self.route.server}/{self.route.slot}"


# Seconds a request waits, before routing, for earlier replies the server is tokenizing.
REPLY_WAIT = 1.0


class SlotManager:
    def __init__(
        self,
        servers: list[ServerSlots],
        policy: RoutePolicy,
        max_saved_bytes: int,
        clock: Callable[[], float] = time.monotonic,
        queue_timeout: float = 300.0,
        persist: Callable[[str, Callable[[], bytes] | None], None] | None = None,
    ) -> None:
        self.servers = servers
        self.policy = policy
        self.clock = clock
        self.queue_timeout = queue_timeout
        # Requests waiting for any slot to free, first come first served.
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.catalog = SavedCatalog(max_saved_bytes)
        self.ghosts = Ghosts()
        self._lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        # Mirrors slot contents and saved files to durable storage (LMDB), so that a
        # restarted kvproxy starts warm: persist(key, value or None to delete).
        # The value is a function serializing the state, called on the writer thread.
        self.persist = persist

    def _mirror_slot(self, server: ServerSlots, slot: int) -> None:
        if self.persist is None:
            return
        held = server.table.held.get(slot)
        key = f"live|{server.upstream.url}|{slot}"
        if held is None:
            self.persist(key, None)
            return
        saved_len, owner = server.table.states[slot].saved_len, server.table.states[slot].owner
        self.persist(key, lambda: encode_state(held, saved_len=saved_len, owner=owner))

    def _mirror_file(self, name: str) -> None:
        if self.persist is None:
            return
        info, prompt = self.catalog.files.get(name), self.catalog.get(name)
        if info is None or prompt is None:
            self.persist(f"file|{name}", None)
            return
        url, size = self.servers[info.server].upstream.url, info.size
        owners = sorted(self.catalog.owners_of(name))
        self.persist(f"file|{name}", lambda: encode_state(prompt, upstream=url, size=size,
                                                          owners=owners))  # fmt: skip

    def load_state(self, items: list[tuple[str, bytes]]) -> int:
        """Slot contents and saved files from a previous run, for the upstreams that are
        still configured (files only if still on disk, where kvproxy knows the directory).
        The next request's /slots check cuts back whatever the servers no longer hold."""
        by_url = {server.upstream.url: server for server in self.servers}
        loaded = 0
        for key, raw in items:
            kind, _, rest = key.partition("|")
            try:
                prompt, meta = decode_state(raw)
            except (ValueError, KeyError, TypeError):
                continue
            if kind == "live":
                url, _, slot_text = rest.rpartition("|")
                server = by_url.get(url)
                if server is None or not slot_text.isdigit() or int(slot_text) >= server.n_slots:
                    continue
                server.table.held.put(int(slot_text), prompt)
                server.table.states[int(slot_text)].saved_len = int(meta.get("saved_len", 0))
                owner = meta.get("owner")
                owned = owner if isinstance(owner, str) else None
                server.table.states[int(slot_text)].owner = owned
            elif kind == "file":
                server = by_url.get(meta.get("upstream", ""))
                if server is None:
                    continue
                if server.slot_dir is not None and not (server.slot_dir / rest).exists():
                    continue
                size = int(meta.get("size", 0))
                owners = [o for o in meta.get("owners") or () if isinstance(o, str)]
                self.catalog.load(SavedFile(rest, server.index, size, server.slot_dir is not None),
                                  prompt, owners)  # fmt: skip
            loaded += 1
        return loaded

    async def tokens_for(
        self, conv: Conversation, bodies: dict[int, dict[str, Any]]
    ) -> dict[int, Prompt | None]:
        """Each upstream's prompt tokens, tokenizing once per distinct tokenizer."""
        done: dict[int, Prompt | None] = {}
        out: dict[int, Prompt | None] = {}
        for server in self.servers:
            key = id(server.tokenizer)
            if key not in done:
                try:
                    toks = await server.tokenizer.prompt_tokens(conv, bodies[server.index])
                except ProxyError as err:
                    log.warning("tokenize_failed", upstream=server.upstream.url, error=err.message)
                    toks = None
                held = server.table.held  # an appended turn: its slot's prompt is a prefix
                like = [p for p in map(held.get, held.keys()) if p is not None]
                done[key] = None if toks is None else Prompt.of(toks, like)
            out[server.index] = done[key]
        return out

    @property
    def whole_files(self) -> frozenset[int]:
        """Upstreams that resume a saved file only when a prompt extends all of it."""
        return frozenset(server.index for server in self.servers if server.recurrent)

    def best_predicted(self, prompts: dict[int, Prompt | None],
                       owner: str | None = None) -> int | None:  # fmt: skip
        """The most cached tokens any live slot or saved file ``owner`` may reuse offers
        these prompts."""
        best: int | None = None
        for server in self.servers:
            prompt = prompts.get(server.index)
            if prompt is None:
                continue
            live = max((v.cached for v in server.table.views(prompt, owner)), default=0)
            file = self.catalog.best(prompt, self.whole_files, owner)
            saved = file.cached if file is not None else 0
            best = max(best or 0, min(max(live, saved), max(0, len(prompt) - 1)))
        return best

    async def acquire_prompts(self, prompts: dict[int, Prompt | None],
                              owner: str | None = None) -> Lease:  # fmt: skip
        """Route and reserve a slot. When every slot is busy and no busy slot is worth
        waiting for (``routing.choose`` says ``all-busy-least-queued``), the request waits
        in kvproxy's own queue, first come first served, and is routed afresh as soon as
        a slot frees, so that no slot sits idle while requests are pinned elsewhere; after
        ``queue_timeout`` seconds it gets a 503. ``owner``: the principal sending it
        (``slot_table.visible``: it reuses only its own content and what is PUBLIC)."""
        started = time.monotonic()
        deadline = started + self.queue_timeout
        woken = False
        while True:
            if not woken:
                await self._replies_known()
                await self._sync_before_routing()
            # Nobody overtakes the queue: a new request routes only when none is waiting.
            if woken or not any(not w.done() for w in self._waiters):
                lease = await self._route(prompts, owner)
                if lease is not None:
                    lease.queued_ms = (time.monotonic() - started) * 1000
                    return lease
            waiter = asyncio.get_running_loop().create_future()
            if woken:
                self._waiters.appendleft(waiter)  # keeps its place at the head
            else:
                self._waiters.append(waiter)
                if any(s.busy == 0 for server in self.servers for s in server.table.states):
                    self._wake()  # a slot is free: the head of the queue takes it
            woken = True
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await waiter
            except TimeoutError:
                raise Overloaded(
                    f"every slot stayed busy for {self.queue_timeout:g} s (--queue-timeout)"
                ) from None
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # woken, then cancelled: the wake goes to the next one
                raise
            finally:
                if not waiter.done():
                    waiter.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)

    async def _replies_known(self) -> None:
        """Replies still being tokenized by the server are waited for (a round trip on
        loopback, bounded by ``REPLY_WAIT``), so the prediction includes them."""
        pending = [t for t in self._background if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=REPLY_WAIT)

    async def _sync_before_routing(self) -> None:
        """Reconcile with ``/slots`` before routing while the server is idle (a restart
        shows then, and the answer is quick); while it is busy, /slots waits for the
        server's loop, so the check runs in the background instead of delaying dispatch."""
        for server in self.servers:
            if not server.pins:
                continue
            if any(state.busy for state in server.table.states):
                if server.sync_task is None or server.sync_task.done():
                    server.sync_task = asyncio.create_task(self.sync(server))
            else:
                await self.sync(server)

    def _wake(self) -> None:
        """A slot freed: the longest-waiting request routes again."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _route(self, prompts: dict[int, Prompt | None], owner: str | None = None
                     ) -> Lease | None:  # fmt: skip
        async with self._lock:
            now = self.clock()
            views = [v for server in self.servers
                     for v in server.table.views(prompts[server.index], owner)]  # fmt: skip
            any_prompt = next((p for p in prompts.values() if p is not None), None)
            length = len(any_prompt) if any_prompt is not None else 0
            saved = self.catalog.best(any_prompt, self.whole_files, owner)
            route = choose(length, views, saved, self.policy, now)
            if route.reason == "all-busy-least-queued" and len(views) > 1:
                chosen = next(v for v in views if v.key == (route.server, route.slot))
                if chosen.busy > self.policy.server_queue:
                    return None
            if any(v.busy == 0 for v in views if v.key != (route.server, route.slot)):
                self._wake()  # a slot stays free: the next waiter may take it
            server = self.servers[route.server]
            prompt = prompts[route.server]
            server.table.reserve(route.slot, now)
            lease = Lease(server=server, route=route, prompt=prompt,
                          estimated=not server.tokenizer.exact, owner=owner)  # fmt: skip
            if prompt is not None:
                known = known_best(prompt, views, self.catalog, self.ghosts)
                lease.known_best, lease.known_from, lease.known_held = (
                    known.best, known.source, known.held)  # fmt: skip
            if route.lost and not (route.save_first or route.restore is not None):
                self._ghost_unsaved(server, route.slot)
        # The slot is reserved (busy) under the lock; waiting for its save or restore
        # happens outside it, and a cancellation undoes the reservation.
        try:
            if route.save_first or route.restore is not None:
                await self._prepare(lease)
        except BaseException:
            self.unreserve(lease)
            raise
        lease.isolated = server.pins and owner is not None and server.table.isolated(route.slot,
                                                                                 owner)  # fmt: skip
        return lease

    def unreserve(self, lease: Lease) -> None:
        """Give a reserved slot back before the request was sent (cancelled, refused)."""
        if not lease.released:
            lease.released = True
            lease.server.table.unreserve(lease.route.slot)
            self._wake()

    async def _prepare(self, lease: Lease) -> None:
        """Save the victim first, restore a saved prefix: the slot's I/O, serialized with
        checkpoints of the same slot. A plain route waits for nothing: the server runs a
        save already under way before the request that follows it."""
        server, route = lease.server, lease.route
        async with server.prep[route.slot]:
            if route.save_first and server.can_save:
                await self._save(server, route.slot)
            if route.lost:
                self._ghost_unsaved(server, route.slot)
            if route.restore is not None:
                lease.restored = await self._restore(server, route.slot, route.restore,
                                                     lease.owner)  # fmt: skip
                if not lease.restored:
                    lease.route = Route(
                        server=route.server,
                        slot=route.slot,
                        predicted=0,
                        reason="restore-failed",
                        lost=route.lost,
                    )

    def _ghost_unsaved(self, server: ServerSlots, slot: int) -> None:
        """Remember a prefix about to be overwritten that no file holds: a later miss on it
        is then "evicted", not "cold"."""
        held = server.table.held.get(slot)
        if held is not None and server.table.states[slot].saved_len < len(held):
            self.ghosts.add((server.index, slot, self.clock()), held)

    async def checkpoint(self, idle_seconds: float) -> int:
        """Save every slot idle for ``idle_seconds`` whose content is not yet on disk (at
        least ``min_save_tokens`` of it): a crashed or restarted server, or one that
        unloaded the model, then gets its conversations back by restore. Deferred while
        any request is routed to that server. Returns how many slots were saved."""
        saved = 0
        for server in self.servers:
            # A checkpoint supersedes the slot's previous file: only where kvproxy can
            # delete that file (the embedded server's directory, or --slot-dir).
            if not server.can_save or server.slot_dir is None:
                continue
            now = self.clock()
            for slot in server.table.to_checkpoint(now, idle_seconds, self.policy.min_save_tokens):
                lock = server.prep[slot]
                if lock.locked() or server.table.states[slot].busy:
                    continue
                async with lock:
                    if not any(state.busy for state in server.table.states):
                        saved += await self._save(server, slot)
        return saved

    async def checkpoint_loop(self, idle_seconds: float, every: float = 0.5) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                await self.checkpoint(idle_seconds)
            except ProxyError as err:
                log.warning("checkpoint_failed", error=err.message)

    async def sync(self, server: ServerSlots) -> None:
        """Reconcile with the server's own ``/slots``: a restarted server, or another client
        talking to it directly, leaves slots that hold less than the table says. A slow or
        failing answer skips the check. At most once per SYNC_INTERVAL: a restart takes
        longer than that, and a burst of requests need not pay a round trip each."""
        now = self.clock()
        if server.synced is not None and now - server.synced < SYNC_INTERVAL:
            return
        server.synced = now
        try:
            slots = await asyncio.wait_for(server.upstream.get_json("/slots"), SYNC_TIMEOUT)
        except (ProxyError, TimeoutError):
            return
        for cut in server.table.reconcile(slots):
            log.info("slot_out_of_sync", slot=cut.slot, index_tokens=cut.index_tokens,
                     server_tokens=cut.server_tokens)  # fmt: skip
            self._mirror_slot(server, cut.slot)

    async def _slot_action(
        self, server: ServerSlots, slot: int, action: str, name: str
    ) -> dict[str, Any] | None:
        try:
            async with server.upstream.request(
                "POST", f"/slots/{slot}?action={action}", json_body={"filename": name}
            ) as resp:
                data = await resp.json(content_type=None)
                if resp.status == 200 and isinstance(data, dict):
                    return data
                log.warning("slot_action_failed", action=action, slot=slot, status=resp.status)
        except (ProxyError, ValueError) as err:
            log.warning("slot_action_failed", action=action, slot=slot, error=str(err))
        return None

    async def _save(self, server: ServerSlots, slot: int) -> int:
        """Save what the slot holds; 1 if a file was written."""
        held = server.table.held.get(slot)
        name = save_name(held) if held is not None else None
        if held is None or name is None:
            return 0
        owner = server.table.states[slot].owner
        if name in self.catalog:
            self.catalog.touch(name)
            self.catalog.share(name, owner)
            server.table.saved(slot, held)
            self._mirror_file(name)
            return 0
        deletable = server.slot_dir is not None
        if not self.catalog.has_room(deletable):
            log.warning("slot_save_skipped", slot=slot, reason="saved files kvproxy cannot "
                        "delete fill --slot-cache-max-bytes; set --slot-dir")  # fmt: skip
            return 0
        data = await self._slot_action(server, slot, "save", name)
        if data is None:
            return 0
        size = int(data.get("n_written") or 0)
        drops = self.catalog.add(SavedFile(name, server.index, size, deletable), held, owner)
        server.table.saved(slot, held)
        self._mirror_file(name)
        self._mirror_slot(server, slot)
        log.info("slot_saved", slot=slot, tokens=len(held), bytes=size, file=name)
        self._perform(drops)
        return 1

    async def _restore(self, server: ServerSlots, slot: int, name: str,
                       owner: str | None = None) -> bool:  # fmt: skip
        """Load a saved file into the slot; it then belongs to ``owner`` (or stays
        PUBLIC, a warm-up prefix anybody may reuse)."""
        prompt = self.catalog.get(name)
        if prompt is None:
            return False
        data = await self._slot_action(server, slot, "restore", name)
        if data is None:
            return False
        self.catalog.touch(name)
        public = PUBLIC in self.catalog.owners_of(name)
        server.table.restored(slot, prompt, PUBLIC if public else owner)
        self._mirror_slot(server, slot)
        log.info("slot_restored", slot=slot, tokens=len(prompt), file=name)
        return True

    def _perform(self, drops: list[Drop]) -> None:
        """Forget the dropped files, delete them, and remember evicted prefixes."""
        for drop in drops:
            name = drop.file.name
            self._mirror_file(name)
            if drop.evicted and drop.prompt is not None:
                self.ghosts.add(("file", name), drop.prompt)
                log.info("slot_file_evicted", file=name, bytes=drop.file.size)
            slot_dir = self.servers[drop.file.server].slot_dir
            if slot_dir is not None:
                (slot_dir / name).unlink(missing_ok=True)

    def saved_bytes(self) -> int:
        return self.catalog.total_bytes()

    def release(
        self,
        lease: Lease,
        *,
        completed: bool,
        generated: list[int] | None = None,
        finish_reason: str | None = None,
        cached_actual: int | None = None,
        prompt_done: bool = False,
        reply_text: str | None = None,
    ) -> None:
        """Record what the slot holds now (``slot_table.held_after``). A completed reply the
        tokenizer could not tokenize here (``generated`` None) is tokenized in the
        background and added once known (``_learn_reply``)."""
        if lease.released:
            return
        lease.released = True
        server, slot = lease.server, lease.route.slot
        holds, processed = None, None
        if lease.prompt is not None:
            outcome = Outcome(completed, None if generated is None else tuple(generated),
                              finish_reason, cached_actual, prompt_done)  # fmt: skip
            holds = held_after(lease.prompt, outcome, lease.route.predicted)
            if completed or prompt_done:
                reused = cached_actual if cached_actual is not None else lease.route.predicted
                processed = (lease.prompt, reused)
        server.table.settle(slot, holds, self.clock(), processed, lease.owner)
        self._mirror_slot(server, slot)
        self._wake()
        if completed and generated is None and reply_text and holds is not None:
            task = asyncio.create_task(self._learn_reply(server, slot, holds, reply_text,
                                                         finish_reason))  # fmt: skip
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _learn_reply(self, server: ServerSlots, slot: int, base: Prompt, text: str,
                           finish_reason: str | None) -> None:  # fmt: skip
        try:
            tokens = await server.tokenizer.reply_tokens(text)
        except (TimeoutError, ProxyError, aiohttp.ClientError) as exc:
            log.info("reply_tokens_unknown", slot=slot, error=str(exc))
            return
        if tokens is not None and server.table.extend(
            slot, base, Outcome(True, tuple(tokens), finish_reason)
        ):
            self._mirror_slot(server, slot)

    async def aclose(self) -> None:
        """Cancel background work (replies being tokenized) at shutdown."""
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    def snapshot(self) -> list[dict[str, Any]]:
        """Per-slot state for logs and tests."""
        return [row for server in self.servers for row in server.table.rows()]


def encode_state(prompt: Prompt, **meta: Any) -> bytes:
    """A prompt's tokens and a little metadata, for LMDB."""
    tokens = base64.b64encode(array("i", prompt.tokens).tobytes()).decode()
    return json.dumps({"tokens": tokens, **meta}, separators=(",", ":")).encode()


def decode_state(raw: bytes) -> tuple[Prompt, dict[str, Any]]:
    data = json.loads(raw)
    tokens = array("i")
    tokens.frombytes(base64.b64decode(data.pop("tokens")))
    return Prompt.of(tokens.tolist()), data


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
