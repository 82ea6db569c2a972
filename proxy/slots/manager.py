"""The async shell around the slot table: requests wait for, take and give back slots.

The decisions are pure: ``routing.choose`` picks the slot, ``proxy.slots.table`` keeps what
every slot holds and ``proxy.slots.catalog`` which saved files exist. This module runs
kvproxy's queue in front of the slots, tokenizes once per distinct tokenizer, reserves the
chosen slot, and records what it holds once the request is done (learning server-tokenized
replies in the background). The slot I/O it asks for (saves, restores, checkpoints,
``/slots`` checks) is ``proxy.slots.actions``; the durable copy of the state is
``proxy.slots.mirror``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import aiohttp

from proxy.core.conversation import Conversation
from proxy.core.errors import Overloaded, ProxyError
from proxy.core.log import get_logger
from proxy.core.prefix_index import Prompt, match_length
from proxy.slots.actions import SlotAction, SlotActions, post_slot_action
from proxy.slots.catalog import Ghosts, SavedCatalog, known_best
from proxy.slots.mirror import Mirror, Persist
from proxy.slots.ram_cache import lookup_fires
from proxy.slots.routing import Route, RoutePolicy, SlotView, choose, usable
from proxy.slots.servers import Lease, ServerSlots
from proxy.slots.table import Outcome, held_after
from proxy.tokens.base import Partial

log = get_logger("kvproxy.slots")

# Seconds a request waits, before routing, for earlier replies the server is tokenizing.
REPLY_WAIT = 1.0


class SlotManager:
    """The servers' slots as one pool: ``acquire_prompts`` routes a request (or queues it
    until a slot frees), ``release`` records what its slot holds afterwards."""

    def __init__(
        self,
        servers: list[ServerSlots],
        policy: RoutePolicy,
        max_saved_bytes: int,
        clock: Callable[[], float] = time.monotonic,
        queue_timeout: float = 300.0,
        persist: Persist | None = None,
        slot_action: SlotAction = post_slot_action,
    ) -> None:
        """``persist``: where slot contents and saved files are mirrored (LMDB), so that a
        restarted kvproxy starts warm (``proxy.slots.mirror``); ``slot_action``: how a
        slot is saved to or restored from a file (llama-server's ``/slots`` actions)."""
        self.servers = servers
        self.policy = policy
        self.clock = clock
        self.queue_timeout = queue_timeout
        # Requests waiting for any slot to free, first come first served.
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.catalog = SavedCatalog(max_saved_bytes)
        self.ghosts = Ghosts()
        self.mirror = Mirror(servers, self.catalog, persist)
        self.actions = SlotActions(servers, self.catalog, self.ghosts, self.mirror, clock,
                                   policy.min_save_tokens, slot_action)  # fmt: skip
        self._lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        # Requests admitted so far: a /slots reading serves the requests admitted before
        # it started (``look_ahead``).
        self._admitted = 0

    def load_state(self, items: list[tuple[str, bytes]]) -> int:
        """Slot contents and saved files a previous run mirrored (``Mirror.load``)."""
        return self.mirror.load(items)

    async def sync(self, server: ServerSlots) -> None:
        """Reconcile the table with the server's ``/slots`` (``SlotActions.sync``)."""
        await self.actions.sync(server)

    def mark_stale(self, server_index: int | None = None) -> None:
        """A request kvproxy did not route (a forwarded generating path) went to server
        ``server_index`` (every server when None): it may have overwritten any idle slot.
        The next acquire reads ``/slots`` from it before routing, whatever the server is
        doing and however recently it was read, so that the table stops predicting reuse
        on a slot whose last task kvproxy did not send; no slot of it is saved until then.
        The mark holds while /slots shows a request running on a slot kvproxy has none on,
        so it may be set when the forwarded request starts or when it ends."""
        for server in self.servers:
            if server.pins and server_index in (None, server.index):
                server.stale, server.synced = True, None
                if server.table.ram is not None:
                    server.table.ram.clear()  # its task may have loaded or saved anything

    async def checkpoint(self, idle_seconds: float) -> int:
        """Save the slots idle for ``idle_seconds`` (``SlotActions.checkpoint``)."""
        return await self.actions.checkpoint(idle_seconds)

    async def checkpoint_loop(self, idle_seconds: float, every: float = 0.5) -> None:
        await self.actions.checkpoint_loop(idle_seconds, every)

    def look_ahead(self) -> int:
        """A request arrived: /slots of each idle server kvproxy pins is read now, while
        the request is parsed and tokenized, so that its route finds a reading taken after
        it came (a server that restarted since the last turn shows, however quickly it came
        back) without a round trip of its own. Returns the request's ticket for
        ``acquire_prompts``. A busy server answers /slots only between its batches: it is
        read in the background at routing instead (``_sync_before_routing``)."""
        self._admitted += 1
        for server in self.servers:
            if not server.pins or server.stale or any(s.busy for s in server.table.states):
                continue
            if server.sync_task is None or server.sync_task.done():
                self._read(server)
        return self._admitted

    def _read(self, server: ServerSlots) -> None:
        """Start reading /slots; the reading serves every request admitted so far."""
        server.read_for = self._admitted
        server.sync_task = asyncio.create_task(self.actions.sync(server, max_age=0))

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
                done[key] = None if toks is None else prompt_of(server, toks)
            out[server.index] = done[key]
        return out

    async def heads_for(self, conv: Conversation, bodies: dict[int, dict[str, Any]]
                        ) -> tuple[dict[int, Prompt | None], Partial] | None:  # fmt: skip
        """An appended turn known in part (``LocalTokenizer.appended_head``) where one
        tokenizer serves every upstream: the prompts of its head, to route on, and what
        tokenizes the rest. None where ``tokens_for`` decides."""
        first = self.servers[0]
        head = getattr(first.tokenizer, "appended_head", None)
        if head is None or any(s.tokenizer is not first.tokenizer for s in self.servers):
            return None
        try:
            part = await head(conv, bodies[first.index])
        except ProxyError:
            return None  # ``tokens_for`` tries again, and logs
        if part is None or not part.head:
            return None
        prompt = prompt_of(first, part.head)
        return {server.index: prompt for server in self.servers}, part

    def head_decides(self, lease: Lease, tail_bytes: int) -> bool:
        """Whether a lease routed on its prompt's head (``heads_for``) is the route the
        whole prompt gets, whatever the tail: a prefix hit on a slot that holds the whole
        head, with nothing restored or saved first, and no RAM lookup by the server for any
        tail of up to ``tail_bytes`` tokens (``ram_cache.lookup_fires``: the slot keeps as
        much of itself, and the prompt as much of the slot, either way). Then only the
        prediction waits for the tail (``complete``)."""
        route, head = lease.route, lease.prompt
        if route.restore is not None or route.save_first or route.reason != "prefix-hit":
            return False
        held = lease.server.table.held.get(route.slot)
        if head is None or held is None or match_length(held, head) < len(head):
            return False
        ram = lease.server.table.ram
        return (
            ram is None
            or not ram.settings.enabled
            or not lookup_fires(
                len(held), len(head), len(head) + tail_bytes, True, ram.settings.similarity
            )
        )

    def complete(self, lease: Lease, prompt: Prompt) -> None:
        """A lease routed on its prompt's head (``head_decides``), given the whole prompt:
        its prediction, what the RAM model shares and what was ever known of it, as
        routing on the whole prompt gives them."""
        route, server = lease.route, lease.server
        views = self.views({s.index: prompt for s in self.servers}, lease.owner)
        view = next(v for v in views if v.key == (route.server, route.slot))
        lease.route = replace(route, predicted=usable(view.cached, len(prompt)),
                              lost=max(0, view.held - view.cached))  # fmt: skip
        held = server.table.held.get(route.slot)
        if lease.ram_shared is not None and held is not None:
            lease.ram_shared = match_length(held, prompt)
        known = known_best(prompt, views, self.catalog, self.ghosts)
        lease.known_best, lease.known_from, lease.known_held = (
            known.best, known.source, known.held)  # fmt: skip
        lease.prompt = prompt

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

    async def acquire_prompts(self, prompts: dict[int, Prompt | None], owner: str | None = None,
                              ticket: int | None = None) -> Lease:  # fmt: skip
        """Route and reserve a slot. When every slot is busy and no busy slot is worth
        waiting for (``routing.choose`` says ``all-busy-least-queued``), the request waits
        in kvproxy's own queue, first come first served, and is routed afresh as soon as
        a slot frees, so that no slot sits idle while requests are pinned elsewhere; after
        ``queue_timeout`` seconds it gets a 503. ``owner``: the principal sending it
        (``slot_table.visible``: it reuses only its own content and what is PUBLIC).
        ``ticket``: from the request's ``look_ahead``; without one, /slots is read here."""
        started = time.monotonic()
        if ticket is None:
            self._admitted += 1
            ticket = self._admitted
        deadline = started + self.queue_timeout
        woken = False
        while True:
            if not woken:
                await self._replies_known()
                await self._sync_before_routing(ticket)
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

    async def _sync_before_routing(self, ticket: int) -> None:
        """Reconcile with ``/slots`` before routing while the server is idle, on a reading
        started after the request arrived (``look_ahead``'s, or one taken now): a restart
        shows then, and the answer is quick. While the server is busy, /slots waits for
        its loop, so the check runs in the background instead of delaying dispatch. A
        stale server (``mark_stale``) is read first in any case."""
        for server in self.servers:
            if not server.pins:
                continue
            if server.stale:
                await self.actions.sync(server)  # a request kvproxy did not route went there
            elif any(state.busy for state in server.table.states):
                if server.sync_task is None or server.sync_task.done():
                    server.sync_task = asyncio.create_task(self.actions.sync(server))
            else:
                if server.read_for < ticket:
                    self._read(server)
                if server.sync_task is not None and not server.sync_task.done():
                    await asyncio.wait([server.sync_task])  # a cancelled request leaves it be

    def _wake(self) -> None:
        """A slot freed: the longest-waiting request routes again."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def views(self, prompts: dict[int, Prompt | None],
              owner: str | None = None) -> list[SlotView]:  # fmt: skip
        """Every slot of every server as the router sees these prompts, each server's
        learned cost of reading a slot back included."""
        default = self.policy.restore_cost
        return [v for server in self.servers
                for v in server.table.views(prompts[server.index], owner,
                                            server.can_save and not server.stale,
                                            server.read_back.share(default))]  # fmt: skip

    async def _route(self, prompts: dict[int, Prompt | None], owner: str | None = None
                     ) -> Lease | None:  # fmt: skip
        async with self._lock:
            now = self.clock()
            views = self.views(prompts, owner)
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
            lease.ram_shared = self._ram_dispatch(server, route, prompt)
            if prompt is not None:
                known = known_best(prompt, views, self.catalog, self.ghosts)
                lease.known_best, lease.known_from, lease.known_held = (
                    known.best, known.source, known.held)  # fmt: skip
            if route.lost and not (route.save_first or route.restore is not None):
                self.actions.ghost_unsaved(server, route.slot)
        # The slot is reserved (busy) under the lock; waiting for its save or restore
        # happens outside it, and a cancellation undoes the reservation.
        try:
            if route.save_first or route.restore is not None:
                await self.actions.prepare(lease)
        except BaseException:
            self.unreserve(lease)
            raise
        lease.isolated = server.pins and owner is not None and server.table.isolated(route.slot,
                                                                                 owner)  # fmt: skip
        return lease

    def _ram_dispatch(self, server: ServerSlots, route: Route,
                      prompt: Prompt | None) -> int | None:  # fmt: skip
        """The server's RAM cache as this task starts (``RamCache.dispatch``), in the order
        kvproxy sends the tasks: the slot saved and an entry loaded when the lookup fires,
        the other idle slots saved. A restored file replaces the slot without a save and
        the prompt extends it: no lookup. Returns the tokens it lets the server reuse."""
        ram = server.table.ram
        if ram is None or prompt is None:
            return None
        held, states = server.table.held, server.table.states
        slot = held.get(route.slot)
        if route.restore is not None:
            slot = self.catalog.get(route.restore) or slot
        idle = [held.get(s) for s, state in enumerate(states) if s != route.slot and not state.busy]
        return ram.dispatch(slot, prompt, pinned=True, idle=idle)[0]

    def unreserve(self, lease: Lease) -> None:
        """Give a reserved slot back before the request was sent (cancelled, refused)."""
        if not lease.released:
            lease.released = True
            lease.server.table.unreserve(lease.route.slot)
            self._wake()

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
        prefilled: int | None = None,
        prefill_ms: float | None = None,
    ) -> None:
        """Record what the slot holds now (``slot_table.held_after``). A completed reply the
        tokenizer could not tokenize here (``generated`` None) is tokenized in the
        background and added once known (``_learn_reply``). ``prefilled`` tokens in
        ``prefill_ms``: the server's own timing, for its restore cost (``ReadBack``)."""
        if lease.released:
            return
        lease.released = True
        server, slot = lease.server, lease.route.slot
        if server.read_back.prefilled(prefilled, prefill_ms):
            self.mirror.rates(server)
        holds, processed = None, None
        if lease.prompt is not None:
            outcome = Outcome(completed, None if generated is None else tuple(generated),
                              finish_reason, cached_actual, prompt_done)  # fmt: skip
            holds = held_after(lease.prompt, outcome, lease.route.predicted)
            if completed or prompt_done:
                reused = cached_actual if cached_actual is not None else lease.route.predicted
                processed = (lease.prompt, reused)
        ram = server.table.ram
        if ram is not None and lease.ram_shared is not None and cached_actual is not None:
            ram.check(lease.route.predicted, min(lease.ram_shared, len(lease.prompt or ()) - 1),
                      cached_actual)  # fmt: skip
        server.table.settle(slot, holds, self.clock(), processed, lease.owner)
        self.mirror.slot(server, slot)
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
            self.mirror.slot(server, slot)

    async def aclose(self) -> None:
        """Cancel background work (replies being tokenized) at shutdown."""
        tasks = [*self._background, *(s.sync_task for s in self.servers if s.sync_task)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def prompt_of(server: ServerSlots, tokens: Sequence[int]) -> Prompt:
    """``tokens`` as a prompt, hashed from what a slot of ``server`` holds: an appended
    turn's slot holds a prefix of it (``Prompt.of``'s ``like``)."""
    held = server.table.held
    return Prompt.of(tokens, [p for p in map(held.get, held.keys()) if p is not None])
