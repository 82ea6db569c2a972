"""The worker-thread side of the record store: items encoded, written in transactions,
held and retried when the disk refuses them, and every item given up counted.

A committed transaction survives a kill -9 (LMDB's default durable commits). A write the
disk refuses (full, failing) is kept in memory, within a bound, and retried; what is given
up is counted, item by item. The map grows up to ``max_bytes``; records are pruned oldest
first by count and by size.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lmdb

from proxy.core.log import get_logger
from proxy.records.damage import guard_store, log_damage
from proxy.records.layout import (
    MIN_MAP,
    RECORDS,
    SCRUBBED,
    STATE_DBS,
    TEXT_DBS,
    delete_oldest,
    open_env,
    record_key,
)

log = get_logger("kvproxy.store")

MAX_QUEUE = 50_000
DEFAULT_MAX_BYTES = 1 << 30
# Past this share of --records-max-bytes, the oldest quarter of the records goes.
PRUNE_AT = 0.8
# Encoded items a refused write keeps for the next try, at most (then the oldest go).
MAX_HELD_BYTES = 64 * 1024 * 1024

# A state value, or a function that serializes it: called on the writer thread, so that
# encoding a long conversation never runs on the event loop.
StateValue = bytes | Callable[[], bytes]
# A queued state change: (database, key, value or None to delete).
StateOp = tuple[bytes, bytes, StateValue | None]
Item = dict[str, Any] | StateOp


class WriteRefused(Exception):
    """The disk took no write (full, failing): keep what it refused and retry."""


class MapStaysFull(Exception):
    """The map is full at ``max_bytes`` even after pruning: an item too large for it."""


# Errors that belong to one item (a key too long, a value larger than the map can hold):
# the batch is written item by item and only those items are skipped.
ITEM_ERRORS = (lmdb.BadValsizeError, MapStaysFull)


class Committer:
    """The store's environment and what runs against it on a worker thread: ``_commit``
    encodes items and writes all that is held. Every use of the environment holds
    ``_env_lock`` (set_mapsize and the compacting swap need no other transaction open in
    the process). Counts every item given up: ``skipped`` (could not be encoded or
    stored), ``lost`` (the disk refused it past the bound, or still at close), ``dropped``
    (for the queue that feeds it); ``records_lost`` says how many of those were records."""

    def __init__(
        self,
        path: Path,
        max_records: int = 200_000,
        map_size: int = 64 * 1024 * 1024,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_queue: int = MAX_QUEUE,
        max_held_bytes: int = MAX_HELD_BYTES,
    ) -> None:
        self.path = path
        self.max_records = max_records
        self.max_bytes = max(max_bytes, MIN_MAP)
        self.max_queue = max_queue
        self.max_held_bytes = max_held_bytes
        self.damage = guard_store(path, writer=True)
        if self.damage is not None:
            log_damage(self.damage)
        self._env_lock = threading.Lock()
        self.env = open_env(path, min(max(map_size, MIN_MAP), self.max_bytes))
        self._open_dbs()
        self._seq = 0
        # Encoded items not yet committed (a refused write keeps them here): records by
        # key, state by (database, key), the latest change of each key only.
        self._held_records: dict[bytes, bytes] = {}
        self._held_state: dict[tuple[bytes, bytes], bytes | None] = {}
        self.written = 0
        self.dropped = 0  # items dropped because the queue was full
        self.skipped = 0  # items that could not be serialized or stored
        self.lost = 0  # items a refusing disk kept out: past the hold bound, or at close
        self.refusals = 0  # writes the disk refused (each retried)
        self.restarts = 0
        self.records_lost = {"dropped": 0, "skipped": 0, "lost": 0}  # of those, records

    def _open_dbs(self) -> None:
        self.db = self.env.open_db(RECORDS)
        self.state_dbs = {name: self.env.open_db(name) for name in STATE_DBS}

    @property
    def held(self) -> int:
        """Items waiting for the disk to take them."""
        return len(self._held_records) + len(self._held_state)

    def _count(self, why: str, is_record: bool, n: int = 1) -> None:
        """Count ``n`` items given up, by why (dropped, skipped, lost)."""
        setattr(self, why, getattr(self, why) + n)
        if is_record:
            self.records_lost[why] += n

    def _close_env(self) -> None:
        """Close the environment once no commit runs (a cancelled writer's retry may still
        be on its thread); what is held then is given up, counted and logged."""
        with self._env_lock:
            if self.held:
                self._give_up(len(self._held_records), len(self._held_state))
                log.error("records_lost_at_close", lost=self.lost,
                          records_lost=self.records_lost)  # fmt: skip
            self.env.close()

    def _commit(self, items: list[Item]) -> bool:
        """Encode the items (one that cannot be is logged and skipped) and write all that
        is held: records in one transaction, state in another. False: the disk refused a
        write, and what it refused is held for the next try."""
        with self._env_lock:
            self._encode(items)
            return self._write_held()

    def _encode(self, items: list[Item]) -> None:
        for item in items:
            try:
                if isinstance(item, tuple):
                    db, key, value = item
                    raw = value() if callable(value) else value
                    self._fits(raw)
                    self._held_state.pop((db, key), None)  # the newest change goes last
                    self._held_state[(db, key)] = raw
                else:
                    self._seq += 1
                    key = record_key(float(item.get("time") or time.time()), self._seq)
                    raw = json.dumps(item, separators=(",", ":")).encode()
                    self._fits(raw)
                    self._held_records[key] = raw
            except Exception as exc:  # any bad item: skip it, never the batch
                self._count("skipped", not isinstance(item, tuple))
                request_id = item.get("request_id") if isinstance(item, dict) else None
                log.error("record_item_skipped", request_id=request_id, error=repr(exc)[:200])

    def _fits(self, raw: bytes | None) -> None:
        """An item past a quarter of the map's limit is refused before it is tried: making
        room for it would prune most of the records."""
        if raw is not None and len(raw) > self.max_bytes // 4:
            raise MapStaysFull(f"{len(raw)} bytes, over a quarter of --records-max-bytes")

    def _write_held(self) -> bool:
        done = self._store(list(self._held_records.items()), self._put_records)
        self.written += len(done)
        for key, _ in done:
            del self._held_records[key]
        counters = {"dropped": self.dropped, "skipped": self.skipped, "lost": self.lost,
                    "restarts": self.restarts,
                    **{f"records_{k}": v for k, v in self.records_lost.items()}}  # fmt: skip
        self._held_state[(b"meta", b"counters")] = json.dumps(counters).encode()
        done = self._store(list(self._held_state.items()), self._put_state)
        for key, _ in done:
            del self._held_state[key]
        if self.held:
            self._bound_held()
        return not self.held

    def _store(self, items: list[Any], fill: Callable[[Any, list[Any]], None]) -> list[Any]:
        """Write ``items`` in one transaction; the items written (all, or none when the
        disk refused). An error that belongs to one item writes them one by one, skipping
        (counting, and forgetting) the bad ones."""
        if not items:
            return []
        try:
            self._write(lambda txn: fill(txn, items))
            return items
        except WriteRefused as exc:
            self._refused(exc)
            return []
        except ITEM_ERRORS:
            pass
        written = []
        for item in items:
            try:
                self._write(lambda txn, item=item: fill(txn, [item]))
                written.append(item)
            except WriteRefused as exc:
                self._refused(exc)
                break
            except ITEM_ERRORS as exc:
                is_record = isinstance(item[0], bytes)
                held: dict[Any, Any] = self._held_records if is_record else self._held_state
                held.pop(item[0], None)
                self._count("skipped", is_record)
                log.error("record_item_skipped", error=str(exc)[:200])
        return written

    def _refused(self, exc: WriteRefused) -> None:
        self.refusals += 1
        log.error("record_write_refused", error=str(exc), held=self.held)

    def _write(self, fill: Callable[[Any], None]) -> None:
        """One write transaction; a full map grows (up to max_bytes) or prunes, then
        retries. WriteRefused: the disk took nothing; MapStaysFull: neither did the map."""
        for _ in range(8):
            try:
                with self.env.begin(write=True, db=self.db) as txn:
                    fill(txn)
                return
            except lmdb.MapFullError:
                if not self._grow():
                    self._prune_bytes(0.5)
            except ITEM_ERRORS:
                raise
            except lmdb.PanicError as exc:  # a failed meta write: reopen and retry later
                self._reopen()
                raise WriteRefused(str(exc)) from exc
            except (lmdb.Error, OSError) as exc:  # ENOSPC (DiskError), EIO, EFBIG, ...
                raise WriteRefused(str(exc)) from exc
        raise MapStaysFull("map full after growing and pruning")

    def _reopen(self) -> None:
        map_size = self.env.info()["map_size"]
        self.env.close()
        self.env = open_env(self.path, map_size)
        self._open_dbs()

    def _bound_held(self) -> None:
        """Keep what a refused write holds within ``max_queue`` items and ``max_held_bytes``,
        giving up the oldest records first, then the oldest state, each counted as lost."""
        size = sum(len(v) for v in self._held_records.values()) + sum(
            len(v or b"") for v in self._held_state.values()
        )
        records, state = 0, 0
        while self._held_records and (size > self.max_held_bytes or self.held > self.max_queue):
            key = next(iter(self._held_records))
            size -= len(self._held_records.pop(key))
            records += 1
        while len(self._held_state) > 1 and size > self.max_held_bytes:
            key = next(k for k in self._held_state if k != (b"meta", b"counters"))
            size -= len(self._held_state.pop(key) or b"")
            state += 1
        if records or state:
            self._give_up(records, state, held=False)
            log.error("records_lost", records=records, state=state, lost=self.lost,
                      detail="the disk refuses writes and the hold is full")  # fmt: skip

    def _give_up(self, records: int, state: int, held: bool = True) -> None:
        """Count items given up as lost (``held``: they are the whole hold, cleared)."""
        state -= 1 if held and (b"meta", b"counters") in self._held_state else 0
        self._count("lost", True, records)
        self._count("lost", False, max(state, 0))
        if held:
            self._held_records.clear()
            self._held_state.clear()

    def _grow(self) -> bool:
        size = self.env.info()["map_size"]
        if size >= self.max_bytes:
            return False
        self.env.set_mapsize(min(size * 2, self.max_bytes))
        return True

    def _put_records(self, txn: Any, records: list[tuple[bytes, bytes]]) -> None:
        for key, raw in records:
            txn.put(key, raw)
        excess = txn.stat(self.db)["entries"] - self.max_records
        if excess > 0:
            delete_oldest(txn, excess)
        if self.used_bytes(txn) > PRUNE_AT * self.max_bytes:
            entries = txn.stat(self.db)["entries"]
            delete_oldest(txn, max(1, entries // 4))

    def _put_state(self, txn: Any, state: list[tuple[tuple[bytes, bytes], bytes | None]]) -> None:
        for (db, key), raw in state:
            if raw is None:
                txn.delete(key, db=self.state_dbs[db])
            else:
                txn.put(key, raw, db=self.state_dbs[db])
            if db in TEXT_DBS:  # text in the file again: a later drop must scrub
                txn.delete(SCRUBBED, db=self.state_dbs[b"meta"])

    def used_bytes(self, txn: Any) -> int:
        """Pages in use by the records and state (freed pages are reused, not counted)."""
        pages = 0
        for db in (self.db, *self.state_dbs.values()):
            st = txn.stat(db)
            pages += st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
        return pages * int(st["psize"])

    def _prune_bytes(self, share: float) -> None:
        try:
            with self.env.begin(write=True, db=self.db) as txn:
                entries = txn.stat(self.db)["entries"]
                delete_oldest(txn, max(1, int(entries * share)))
        except lmdb.Error as exc:
            log.error("record_prune_failed", error=str(exc))
