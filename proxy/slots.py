"""What every upstream slot holds, and the I/O that routing decides: pin, save, restore.

The decisions are ``routing.choose`` (pure); this module keeps the state they are made
from (a ``PrefixIndex`` of live slots, one of saved files, one of evicted "ghosts" for miss
causes), performs the slot saves and restores on llama-server, and updates the state from
what each response says the slot now holds.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xxhash

from proxy.cause import MissCause
from proxy.conversation import Conversation
from proxy.errors import ProxyError
from proxy.log import get_logger
from proxy.prefix_index import BLOCK, PrefixIndex, Prompt, common_prefix
from proxy.routing import Route, RoutePolicy, SavedView, SlotView, choose
from proxy.tokens import Tokenizer
from proxy.upstream import Upstream

log = get_logger("kvproxy.slots")

# Evicted prefixes remembered, oldest out, so that a later miss can say "evicted" (a few
# hundred: each holds its tokens).
GHOST_LIMIT = 256
# The generated tail of a slot is predicted from re-tokenized text, so a prompt that stops
# this close to the end of what a slot held still counts as extending it.
DIVERGE_SLACK = 2
# Seconds to wait for llama-server's /slots before routing without the check.
SYNC_TIMEOUT = 0.5
SYNC_INTERVAL = 1.0


@dataclass
class SlotState:
    busy: int = 0
    last_used: float = 0.0
    saved_len: int = 0  # leading tokens of what it holds that a saved file covers
    prep: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass
class UpstreamSlots:
    """The slots of one upstream (ollama: one per instance) and how to tokenize for it."""

    index: int
    upstream: Upstream
    tokenizer: Tokenizer
    n_slots: int
    n_ctx: int | None
    can_save: bool
    slot_dir: Path | None = None  # where its save files are, when they are on this host
    held: PrefixIndex = field(default_factory=PrefixIndex)
    states: list[SlotState] = field(default_factory=list)
    synced: float | None = None  # when /slots was last read
    max_inflight: int = 0  # requests sent to it at once; 0: 4 per slot
    gate: asyncio.Semaphore = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.states:
            self.states = [SlotState() for _ in range(self.n_slots)]
        self.gate = asyncio.Semaphore(self.max_inflight or 4 * max(1, self.n_slots))

    @property
    def pins(self) -> bool:
        return self.upstream.kind == "llama"


@dataclass
class Lease:
    """One request's claim on a slot, from routing until its response is done."""

    pool: UpstreamSlots
    route: Route
    prompt: Prompt | None
    estimated: bool
    known_best: int = 0  # longest prefix of this prompt anything ever held (live, saved, evicted)
    known_from: str = "none"
    known_held: int = 0  # how long that holder was, for "diverged at token N"
    restored: bool = False
    released: bool = False

    @property
    def slot_label(self) -> str:
        return f"{self.route.upstream}/{self.route.slot}"


@dataclass
class SavedFile:
    name: str
    upstream: int
    size: int


class SlotManager:
    def __init__(
        self,
        pools: list[UpstreamSlots],
        policy: RoutePolicy,
        max_saved_bytes: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pools = pools
        self.policy = policy
        self.max_saved_bytes = max_saved_bytes
        self.clock = clock
        self.saved = PrefixIndex()
        self.saved_files: OrderedDict[str, SavedFile] = OrderedDict()
        self.ghosts = PrefixIndex()
        self._lock = asyncio.Lock()
        # Mirrors slot contents and saved files to durable storage (LMDB), so that a
        # restarted kvproxy starts warm: persist(key, value or None to delete).
        # The value is a function serializing the state, called on the writer thread.
        self.persist: Callable[[str, Callable[[], bytes] | None], None] | None = None

    def _mirror_slot(self, pool: UpstreamSlots, slot: int) -> None:
        if self.persist is None:
            return
        held = pool.held.get(slot)
        key = f"live|{pool.upstream.url}|{slot}"
        if held is None:
            self.persist(key, None)
            return
        saved_len = pool.states[slot].saved_len
        self.persist(key, lambda: encode_state(held, saved_len=saved_len))

    def _mirror_file(self, name: str) -> None:
        if self.persist is None:
            return
        info, prompt = self.saved_files.get(name), self.saved.get(name)
        if info is None or prompt is None:
            self.persist(f"file|{name}", None)
            return
        url, size = self.pools[info.upstream].upstream.url, info.size
        self.persist(f"file|{name}", lambda: encode_state(prompt, upstream=url, size=size))

    def load_state(self, items: list[tuple[str, bytes]]) -> int:
        """Slot contents and saved files from a previous run, for the upstreams that are
        still configured (files only if still on disk, where kvproxy knows the directory).
        The next request's /slots check cuts back whatever the servers no longer hold."""
        by_url = {pool.upstream.url: pool for pool in self.pools}
        loaded = 0
        for key, raw in items:
            kind, _, rest = key.partition("|")
            try:
                prompt, meta = decode_state(raw)
            except (ValueError, KeyError, TypeError):
                continue
            if kind == "live":
                url, _, slot_text = rest.rpartition("|")
                pool = by_url.get(url)
                if pool is None or not slot_text.isdigit() or int(slot_text) >= pool.n_slots:
                    continue
                pool.held.put(int(slot_text), prompt)
                pool.states[int(slot_text)].saved_len = int(meta.get("saved_len", 0))
            elif kind == "file":
                pool = by_url.get(meta.get("upstream", ""))
                if pool is None:
                    continue
                if pool.slot_dir is not None and not (pool.slot_dir / rest).exists():
                    continue
                self.saved_files[rest] = SavedFile(rest, pool.index, int(meta.get("size", 0)))
                self.saved.put(rest, prompt)
            loaded += 1
        return loaded

    async def tokens_for(
        self, conv: Conversation, bodies: dict[int, dict[str, Any]]
    ) -> dict[int, Prompt | None]:
        """Each upstream's prompt tokens, tokenizing once per distinct tokenizer."""
        done: dict[int, Prompt | None] = {}
        out: dict[int, Prompt | None] = {}
        for pool in self.pools:
            key = id(pool.tokenizer)
            if key not in done:
                try:
                    toks = await pool.tokenizer.prompt_tokens(conv, bodies[pool.index])
                except ProxyError as err:
                    log.warning("tokenize_failed", upstream=pool.upstream.url, error=err.message)
                    toks = None
                done[key] = None if toks is None else Prompt.of(toks)
            out[pool.index] = done[key]
        return out

    def views(self, pool: UpstreamSlots, prompt: Prompt | None) -> list[SlotView]:
        out = []
        for slot, state in enumerate(pool.states):
            held = pool.held.get(slot)
            out.append(
                SlotView(
                    upstream=pool.index,
                    slot=slot,
                    cached=pool.held.match(slot, prompt) if prompt is not None else 0,
                    held=len(held) if held is not None else 0,
                    busy=state.busy,
                    last_used=state.last_used,
                    unsaved=(len(held) - state.saved_len) if held is not None else 0,
                )
            )
        return out

    def best_saved(self, prompt: Prompt | None) -> SavedView | None:
        if prompt is None or not self.saved_files:
            return None
        name, n = self.saved.longest(prompt)
        if name is None or n <= 0:
            return None
        return SavedView(name=str(name), cached=n, upstream=self.saved_files[str(name)].upstream)

    async def acquire(self, conv: Conversation, bodies: dict[int, dict[str, Any]]) -> Lease:
        """Route the request, and prepare the slot (save what it would lose, restore what
        the request extends) before the request is sent."""
        return await self.acquire_prompts(await self.tokens_for(conv, bodies))

    def best_predicted(self, prompts: dict[int, Prompt | None]) -> int | None:
        """The most cached tokens any live slot or saved file offers these prompts."""
        best: int | None = None
        for pool in self.pools:
            prompt = prompts.get(pool.index)
            if prompt is None:
                continue
            live = max((v.cached for v in self.views(pool, prompt)), default=0)
            _, saved = self.saved.longest(prompt)
            best = max(best or 0, min(max(live, saved), max(0, len(prompt) - 1)))
        return best

    async def acquire_prompts(self, prompts: dict[int, Prompt | None]) -> Lease:
        for pool in self.pools:
            if pool.pins:
                await self.sync(pool)
        async with self._lock:
            now = self.clock()
            views: list[SlotView] = []
            for pool in self.pools:
                views.extend(self.views(pool, prompts[pool.index]))
            any_prompt = next((p for p in prompts.values() if p is not None), None)
            length = len(any_prompt) if any_prompt is not None else 0
            route = choose(length, views, self.best_saved(any_prompt), self.policy, now)
            pool = self.pools[route.upstream]
            prompt = prompts[route.upstream]
            state = pool.states[route.slot]
            state.busy += 1
            state.last_used = now
            lease = Lease(pool=pool, route=route, prompt=prompt, estimated=not pool.tokenizer.exact)
            if prompt is not None:
                self._note_known(lease, prompt, views)
        # The slot is reserved (busy) under the lock; waiting for its save or restore
        # happens outside it, and a cancellation undoes the reservation.
        try:
            await self._prepare(lease, state)
        except BaseException:
            state.busy = max(0, state.busy - 1)
            raise
        return lease

    async def _prepare(self, lease: Lease, state: SlotState) -> None:
        """Save the victim first, restore a saved prefix: the slot's I/O, serialized with
        checkpoints of the same slot by ``state.prep``."""
        pool, route = lease.pool, lease.route
        await state.prep.acquire()
        try:
            if route.save_first and pool.can_save:
                await self._save(pool, route.slot)
            held = pool.held.get(route.slot)
            if route.lost and held is not None and state.saved_len < len(held):
                self._ghost(pool, route.slot)
            if route.restore is not None:
                lease.restored = await self._restore(pool, route.slot, route.restore)
                if not lease.restored:
                    lease.route = Route(
                        upstream=route.upstream,
                        slot=route.slot,
                        predicted=0,
                        reason="restore-failed",
                        lost=route.lost,
                    )
        finally:
            state.prep.release()

    async def checkpoint(self, idle_seconds: float) -> int:
        """Save every slot idle for ``idle_seconds`` whose content is not yet on disk (at
        least ``min_save_tokens`` of it): a crashed or restarted server, or one that
        unloaded the model, then gets its conversations back by restore. Returns how
        many slots were saved."""
        saved = 0
        now = self.clock()
        for pool in self.pools:
            # A checkpoint supersedes the slot's previous file: only where kvproxy can
            # delete that file (the embedded server's directory, or --slot-dir).
            if not pool.can_save or pool.slot_dir is None:
                continue
            for slot, state in enumerate(pool.states):
                held = pool.held.get(slot)
                if (
                    held is None
                    or state.busy
                    or state.prep.locked()
                    or now - state.last_used < idle_seconds
                    or len(held) - state.saved_len < self.policy.min_save_tokens
                ):
                    continue
                async with state.prep:
                    if state.busy == 0 and pool.held.get(slot) is held:
                        await self._save(pool, slot)
                        saved += 1
        return saved

    async def checkpoint_loop(self, idle_seconds: float, every: float = 0.5) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                await self.checkpoint(idle_seconds)
            except ProxyError as err:
                log.warning("checkpoint_failed", error=err.message)

    async def sync(self, pool: UpstreamSlots) -> None:
        """Reconcile with the server's own ``/slots`` (``n_prompt_tokens`` per slot): a
        restarted server, or another client talking to it directly, leaves slots that hold
        less than the index says; those are cut back to what the server has. Slots with a
        request in flight are left alone; a slow or failing answer skips the check. At
        most once per SYNC_INTERVAL: a restart takes longer than that, and a burst of
        requests need not pay a round trip each."""
        now = self.clock()
        if pool.synced is not None and now - pool.synced < SYNC_INTERVAL:
            return
        pool.synced = now
        try:
            slots = await asyncio.wait_for(pool.upstream.get_json("/slots"), SYNC_TIMEOUT)
        except (ProxyError, TimeoutError):
            return
        if not isinstance(slots, list):
            return
        for info in slots:
            slot = info.get("id") if isinstance(info, dict) else None
            if not isinstance(slot, int) or not 0 <= slot < len(pool.states):
                continue
            held = pool.held.get(slot)
            if held is None or pool.states[slot].busy or info.get("is_processing"):
                continue
            has = int(info.get("n_prompt_tokens") or 0)
            if has < len(held) - DIVERGE_SLACK:
                log.info("slot_out_of_sync", slot=slot, index_tokens=len(held), server_tokens=has)
                if has:
                    pool.held.put(slot, Prompt.of(held.tokens[:has]))
                else:
                    pool.held.remove(slot)
                pool.states[slot].saved_len = min(pool.states[slot].saved_len, has)
                self._mirror_slot(pool, slot)

    def _note_known(self, lease: Lease, prompt: Prompt, views: list[SlotView]) -> None:
        live = max(views, key=lambda v: v.cached)
        best, source, held = live.cached, "live", live.held
        for name, index in (("saved", self.saved), ("evicted", self.ghosts)):
            key, n = index.longest(prompt)
            if n > best and key is not None:
                entry = index.get(key)
                best, source, held = n, name, len(entry) if entry is not None else n
        lease.known_best, lease.known_from, lease.known_held = best, source, held

    def _ghost(self, pool: UpstreamSlots, slot: int) -> None:
        held = pool.held.get(slot)
        if held is None:
            return
        self.ghosts.put((pool.index, slot, self.clock()), held)
        while len(self.ghosts) > GHOST_LIMIT:
            self.ghosts.remove(self.ghosts.keys()[0])

    async def _slot_action(
        self, pool: UpstreamSlots, slot: int, action: str, name: str
    ) -> dict[str, Any] | None:
        try:
            async with pool.upstream.request(
                "POST", f"/slots/{slot}?action={action}", json_body={"filename": name}
            ) as resp:
                data = await resp.json(content_type=None)
                if resp.status == 200 and isinstance(data, dict):
                    return data
                log.warning("slot_action_failed", action=action, slot=slot, status=resp.status)
        except (ProxyError, ValueError) as err:
            log.warning("slot_action_failed", action=action, slot=slot, error=str(err))
        return None

    async def _save(self, pool: UpstreamSlots, slot: int) -> None:
        held = pool.held.get(slot)
        if held is None or not held.hashes:
            return
        name = f"kvp-{xxhash.xxh3_64_hexdigest(repr(held.hashes[-1]).encode())}-{len(held)}.bin"
        state = pool.states[slot]
        if name in self.saved_files:
            self.saved_files.move_to_end(name)
            state.saved_len = len(held)
            return
        data = await self._slot_action(pool, slot, "save", name)
        if data is None:
            return
        # A file that holds a prefix of this content is now redundant.
        older, n = self.saved.longest(held)
        if older is not None and (entry := self.saved.get(older)) is not None and n == len(entry):
            self._drop_file(str(older), ghost=False)
        size = int(data.get("n_written") or 0)
        self.saved_files[name] = SavedFile(name=name, upstream=pool.index, size=size)
        self.saved.put(name, held)
        state.saved_len = len(held)
        self._mirror_file(name)
        self._mirror_slot(pool, slot)
        log.info("slot_saved", slot=slot, tokens=len(held), bytes=size, file=name)
        self._bound_disk()

    async def _restore(self, pool: UpstreamSlots, slot: int, name: str) -> bool:
        prompt = self.saved.get(name)
        if prompt is None:
            return False
        data = await self._slot_action(pool, slot, "restore", name)
        if data is None:
            return False
        self.saved_files.move_to_end(name)
        pool.held.put(slot, prompt)
        pool.states[slot].saved_len = len(prompt)
        self._mirror_slot(pool, slot)
        log.info("slot_restored", slot=slot, tokens=len(prompt), file=name)
        return True

    def _drop_file(self, name: str, ghost: bool) -> None:
        old = self.saved_files.pop(name, None)
        prompt = self.saved.remove(name)
        self._mirror_file(name)
        if ghost and prompt is not None:
            self.ghosts.put(("file", name), prompt)
        if old is not None:
            slot_dir = self.pools[old.upstream].slot_dir
            if slot_dir is not None:
                (slot_dir / name).unlink(missing_ok=True)

    def _bound_disk(self) -> None:
        """Oldest-used saved files go first once their total passes the budget."""
        total = self.saved_bytes()
        while total > self.max_saved_bytes and len(self.saved_files) > 1:
            name, old = next(iter(self.saved_files.items()))
            total -= old.size
            self._drop_file(name, ghost=True)
            log.info("slot_file_evicted", file=name, bytes=old.size)

    def saved_bytes(self) -> int:
        return sum(f.size for f in self.saved_files.values())

    def release(
        self,
        lease: Lease,
        *,
        completed: bool,
        generated: list[int] | None = None,
        finish_reason: str | None = None,
        cached_actual: int | None = None,
        prompt_done: bool = False,
    ) -> None:
        """What the slot holds now: the prompt and the tokens fed back while generating
        (all sampled tokens but the last, unless the last was the end-of-generation token
        that is never fed back). An interrupted request leaves only what is certain: the
        whole prompt once generation started (``prompt_done``), else the reused part."""
        if lease.released:
            return
        lease.released = True
        pool, slot = lease.pool, lease.route.slot
        state = pool.states[slot]
        state.busy = max(0, state.busy - 1)
        state.last_used = self.clock()
        prompt = lease.prompt
        if prompt is None:
            pool.held.remove(slot)
            state.saved_len = 0
            self._mirror_slot(pool, slot)
            return
        if completed:
            # generated is None when the tokenizer needs I/O: the prompt is what is certain.
            tail = list(generated or [])
            if finish_reason not in ("stop", "eos") and tail:
                tail = tail[:-1]
            holds = Prompt.of(prompt.tokens + tuple(tail))
        elif prompt_done:
            holds = prompt
        else:
            keep = cached_actual if cached_actual is not None else lease.route.predicted
            holds = Prompt.of(prompt.tokens[: max(0, keep)])
        previous = pool.held.get(slot)
        if previous is None or common_prefix(previous.tokens, holds.tokens) < state.saved_len:
            state.saved_len = 0
        pool.held.put(slot, holds)
        self._mirror_slot(pool, slot)

    def snapshot(self) -> list[dict[str, Any]]:
        """Per-slot state for logs and tests."""
        out = []
        for pool in self.pools:
            for slot, state in enumerate(pool.states):
                held = pool.held.get(slot)
                out.append(
                    {
                        "upstream": pool.index,
                        "slot": slot,
                        "held": len(held) if held is not None else 0,
                        "busy": state.busy,
                        "saved_len": state.saved_len,
                    }
                )
        return out


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
