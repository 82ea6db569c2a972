"""What kvproxy does to the server's slots beyond sending requests: llama-server's slot
save and restore actions, idle checkpoints, reconciliation with ``/slots``, and deleting
the files the catalog drops. The table and the catalog decide (``proxy.slots.table``,
``proxy.slots.catalog``); this module performs it and mirrors the result
(``proxy.slots.mirror``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from proxy.core.errors import ProxyError
from proxy.core.log import get_logger
from proxy.slots.catalog import Drop, Ghosts, SavedCatalog, SavedFile
from proxy.slots.mirror import Mirror
from proxy.slots.routing import Route
from proxy.slots.servers import Lease, ServerSlots
from proxy.slots.table import PUBLIC, save_name

log = get_logger("kvproxy.slots")

# Seconds to wait for llama-server's /slots before routing without the check.
SYNC_TIMEOUT = 0.5
SYNC_INTERVAL = 1.0

# One slot action (``save`` or ``restore`` of a file) on a server: its JSON answer, or
# None when it failed.
SlotAction = Callable[[ServerSlots, int, str, str], Awaitable[dict[str, Any] | None]]


async def post_slot_action(server: ServerSlots, slot: int, action: str,
                           name: str) -> dict[str, Any] | None:  # fmt: skip
    """llama-server's ``POST /slots/{slot}?action=...`` with the file name."""
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


class SlotActions:
    """Saves, restores, checkpoints and ``/slots`` checks for the servers' slots."""

    def __init__(self, servers: list[ServerSlots], catalog: SavedCatalog, ghosts: Ghosts,
                 mirror: Mirror, clock: Callable[[], float], min_save_tokens: int,
                 slot_action: SlotAction = post_slot_action) -> None:  # fmt: skip
        self.servers = servers
        self.catalog = catalog
        self.ghosts = ghosts
        self.mirror = mirror
        self.clock = clock
        self.min_save_tokens = min_save_tokens
        self.slot_action = slot_action

    async def sync(self, server: ServerSlots, max_age: float = SYNC_INTERVAL) -> None:
        """Reconcile with the server's own ``/slots``: a restarted server, or another client
        talking to it directly, leaves slots that hold less than the table says or other
        content (``SlotTable.reconcile``). A slow or failing answer skips the check. At
        most once per ``max_age`` seconds (a request's own reading passes 0:
        ``SlotManager.look_ahead``). A stale server stays stale while /slots shows a
        request kvproxy did not send still running."""
        now = self.clock()
        if server.synced is not None and now - server.synced < max_age:
            return
        server.synced = now
        try:
            # Not ``wait_for``, whose task of its own would send the request a loop turn later.
            async with asyncio.timeout(SYNC_TIMEOUT):
                slots = await server.upstream.get_json("/slots")
        except (ProxyError, TimeoutError):
            return
        for cut in server.table.reconcile(slots, stale=server.stale):
            log.info("slot_out_of_sync", slot=cut.slot, index_tokens=cut.index_tokens,
                     server_tokens=cut.server_tokens, foreign=cut.foreign)  # fmt: skip
            self.mirror.slot(server, cut.slot)
            if server.table.ram is not None:
                server.table.ram.clear()  # a restart or another client: RAM unknown
        server.stale = server.stale and server.table.unaccounted(slots)

    async def prepare(self, lease: Lease) -> None:
        """Save the victim first, restore a saved prefix: the slot's I/O, serialized with
        checkpoints of the same slot. A plain route waits for nothing: the server runs a
        save already under way before the request that follows it."""
        server, route = lease.server, lease.route
        async with server.prep[route.slot]:
            if route.save_first and server.can_save:
                await self.save(server, route.slot)
            if route.lost:
                self.ghost_unsaved(server, route.slot)
            if route.restore is not None:
                lease.restored = await self.restore(server, route.slot, route.restore,
                                                    lease.owner)  # fmt: skip
                if not lease.restored:
                    lease.route = Route(
                        server=route.server,
                        slot=route.slot,
                        predicted=0,
                        reason="restore-failed",
                        lost=route.lost,
                    )

    def ghost_unsaved(self, server: ServerSlots, slot: int) -> None:
        """Remember a prefix about to be overwritten that no file holds: a later miss on it
        is then "evicted", not "cold"."""
        held = server.table.held.get(slot)
        if held is not None and server.table.states[slot].saved_len < len(held):
            self.ghosts.add((server.index, slot, self.clock()), held)

    async def checkpoint(self, idle_seconds: float) -> int:
        """Save every slot idle for ``idle_seconds`` whose content is not yet on disk (at
        least ``min_save_tokens`` of it): a crashed or restarted server, or one that
        unloaded the model, then gets its conversations back by restore. Deferred while
        any request is routed to that server, and on a stale server until /slots has
        been read again. Returns how many slots were saved."""
        saved = 0
        for server in self.servers:
            # A checkpoint supersedes the slot's previous file: only where kvproxy can
            # delete that file (the embedded server's directory, or --slot-dir).
            if not server.can_save or server.slot_dir is None:
                continue
            if server.stale:
                await self.sync(server)
                if server.stale:
                    continue
            now = self.clock()
            for slot in server.table.to_checkpoint(now, idle_seconds, self.min_save_tokens):
                lock = server.prep[slot]
                if lock.locked() or server.table.states[slot].busy:
                    continue
                async with lock:
                    if not any(state.busy for state in server.table.states):
                        saved += await self.save(server, slot)
        return saved

    async def checkpoint_loop(self, idle_seconds: float, every: float = 0.5) -> None:
        """Checkpoints every ``every`` seconds; a round that fails is logged and the next
        one runs (an error must not end the checkpoints for the rest of the run)."""
        while True:
            await asyncio.sleep(every)
            try:
                await self.checkpoint(idle_seconds)
            except ProxyError as err:
                log.warning("checkpoint_failed", error=err.message)
            except Exception as err:
                log.error("checkpoint_failed", error=f"{type(err).__name__}: {err}",
                          exc_info=True)  # fmt: skip

    async def save(self, server: ServerSlots, slot: int) -> int:
        """Save what the slot holds; 1 if a file was written. Never content kvproxy did
        not put there: nothing on a stale server, nor on a slot /slots cut back (the file
        would carry kvproxy's name for another client's prompt)."""
        held = server.table.held.get(slot)
        name = save_name(held) if held is not None else None
        if held is None or name is None or server.stale or server.table.states[slot].unverified:
            return 0
        owner = server.table.states[slot].owner
        if name in self.catalog:
            self.catalog.touch(name)
            self.catalog.share(name, owner)
            server.table.saved(slot, held)
            self.mirror.file(name)
            return 0
        deletable = server.slot_dir is not None
        if not self.catalog.has_room(deletable):
            log.warning("slot_save_skipped", slot=slot, reason="saved files kvproxy cannot "
                        "delete fill --slot-cache-max-bytes; set --slot-dir")  # fmt: skip
            return 0
        data = await self.slot_action(server, slot, "save", name)
        if data is None:
            return 0
        size = int(data.get("n_written") or 0)
        if server.read_back.slot_action("save", data):
            self.mirror.rates(server)
        if server.table.ram is not None:
            server.table.ram.learn_size(data.get("n_written"), data.get("n_saved"))
        drops = self.catalog.add(SavedFile(name, server.index, size, deletable), held, owner)
        server.table.saved(slot, held)
        self.mirror.file(name)
        self.mirror.slot(server, slot)
        log.info("slot_saved", slot=slot, tokens=len(held), bytes=size, file=name)
        self.perform(drops)
        return 1

    async def restore(self, server: ServerSlots, slot: int, name: str,
                      owner: str | None = None) -> bool:  # fmt: skip
        """Load a saved file into the slot; it then belongs to ``owner`` (or stays
        PUBLIC, a warm-up prefix anybody may reuse)."""
        prompt = self.catalog.get(name)
        if prompt is None:
            return False
        data = await self.slot_action(server, slot, "restore", name)
        if data is None:
            return False
        if server.read_back.slot_action("restore", data):
            self.mirror.rates(server)
        self.catalog.touch(name)
        public = PUBLIC in self.catalog.owners_of(name)
        server.table.restored(slot, prompt, PUBLIC if public else owner)
        self.mirror.slot(server, slot)
        log.info("slot_restored", slot=slot, tokens=len(prompt), file=name)
        return True

    def perform(self, drops: list[Drop]) -> None:
        """Forget the dropped files, delete them, and remember evicted prefixes."""
        for drop in drops:
            name = drop.file.name
            self.mirror.file(name)
            if drop.evicted and drop.prompt is not None:
                self.ghosts.add(("file", name), drop.prompt)
                log.info("slot_file_evicted", file=name, bytes=drop.file.size)
            slot_dir = self.servers[drop.file.server].slot_dir
            if slot_dir is not None:
                (slot_dir / name).unlink(missing_ok=True)
