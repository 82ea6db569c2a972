"""Per-request records in LMDB, written by one task so that no handler ever waits on disk.

Handlers hand a finished record to ``RecordStore.put`` (a queue append); the writer task
takes what has queued up, commits it in one transaction on a worker thread, and prunes the
oldest records past ``max_records``. A committed transaction survives a kill -9 (LMDB's
default durable commits); what was still queued is lost with the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lmdb

from proxy.log import get_logger

log = get_logger("kvproxy.store")

RECORDS = b"records"
STATE_DBS = (b"tapes", b"slots", b"meta")
BATCH = 512
MAX_QUEUE = 50_000
MIN_MAP = 1024 * 1024
DEFAULT_MAX_BYTES = 1 << 30
# Past this share of --records-max-bytes, the oldest quarter of the records goes.
PRUNE_AT = 0.8

# A state value, or a function that serializes it: called on the writer thread, so that
# encoding a long conversation never runs on the event loop.
StateValue = bytes | Callable[[], bytes]
# A queued state change: (database, key, value or None to delete).
StateOp = tuple[bytes, bytes, StateValue | None]
Item = dict[str, Any] | StateOp


def record_key(t: float, seq: int) -> bytes:
    """Big-endian nanoseconds then a sequence number: keys sort by time."""
    return struct.pack(">QI", int(t * 1e9), seq & 0xFFFFFFFF)


def key_time(key: bytes) -> float:
    return struct.unpack(">QI", key)[0] / 1e9


def open_env(path: Path, map_size: int, readonly: bool = False) -> lmdb.Environment:
    if not readonly:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return lmdb.open(
        str(path), map_size=map_size, max_dbs=4, readonly=readonly, lock=True, mode=0o600
    )


class RecordStore:
    """Records and state changes, queued by handlers (never blocking) and committed by one
    writer task on a worker thread. The writer outlives any bad item (logged with its
    request id and skipped) and is restarted if it ever dies; the queue drops its oldest
    item beyond ``max_queue``; the map grows up to ``max_bytes`` and records are pruned
    oldest first by count and by size."""

    def __init__(
        self,
        path: Path,
        max_records: int = 200_000,
        map_size: int = 64 * 1024 * 1024,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_queue: int = MAX_QUEUE,
    ) -> None:
        self.path = path
        self.max_records = max_records
        self.max_bytes = max(max_bytes, MIN_MAP)
        self.max_queue = max_queue
        self.env = open_env(path, min(max(map_size, MIN_MAP), self.max_bytes))
        self.db = self.env.open_db(RECORDS)
        self.state_dbs = {name: self.env.open_db(name) for name in STATE_DBS}
        self._queue: deque[Item] = deque()
        self._wake = asyncio.Event()
        self._pending = 0
        self._drained = asyncio.Event()
        self._drained.set()
        self._seq = 0
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.written = 0
        self.dropped = 0  # queued items dropped because the queue was full
        self.skipped = 0  # items that could not be serialized or stored
        self.restarts = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._writer())
        self._task.add_done_callback(self._on_writer_exit)

    def _on_writer_exit(self, task: asyncio.Task[None]) -> None:
        if self._closing or (task.cancelled() and self._closing):
            return
        error = None if task.cancelled() else task.exception()
        log.error("record_writer_died", error=repr(error), restarts=self.restarts + 1)
        self.restarts += 1
        self.start()

    def _enqueue(self, item: Item) -> None:
        if len(self._queue) >= self.max_queue:
            self._queue.popleft()
            self.dropped += 1
            self._done(1)
        self._queue.append(item)
        self._pending += 1
        self._drained.clear()
        self._wake.set()

    def _done(self, n: int) -> None:
        self._pending -= n
        if self._pending <= 0:
            self._pending = 0
            self._drained.set()

    def put(self, record: dict[str, Any]) -> None:
        """Queue one record; never blocks."""
        self._enqueue(record)

    def put_state(self, db: bytes, key: str, value: StateValue | None) -> None:
        """Queue a state change (a tape, say), committed in order with the records."""
        self._enqueue((db, key.encode("utf-8", "surrogatepass"), value))

    def load_state(self, db: bytes) -> list[bytes]:
        """Every value of a state database, in key order (blocking: call off the loop)."""
        return [v for _, v in self.load_items(db)]

    def drop_state(self, db: bytes) -> None:
        """Empty a state database (blocking: call off the loop)."""
        with self.env.begin(write=True) as txn:
            txn.drop(self.state_dbs[db], delete=False)

    def load_items(self, db: bytes) -> list[tuple[str, bytes]]:
        with self.env.begin(db=self.state_dbs[db]) as txn:
            return [(bytes(k).decode("utf-8", "replace"), bytes(v)) for k, v in txn.cursor()]

    async def flush(self) -> None:
        """Wait until everything queued so far is committed (or skipped)."""
        await self._drained.wait()

    async def close(self) -> None:
        if self._task is not None:
            await self.flush()
            self._closing = True
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.env.close()

    async def _writer(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._queue.popleft() for _ in range(min(BATCH, len(self._queue)))]
            try:
                await asyncio.to_thread(self._commit, batch)
            finally:
                self._done(len(batch))

    def _commit(self, items: list[Item]) -> None:
        """Records in one transaction, state in another; an item that cannot be encoded is
        logged and skipped; a full map grows (up to max_bytes) or prunes, then retries."""
        records, state = [], []
        for item in items:
            try:
                if isinstance(item, tuple):
                    db, key, value = item
                    raw = value() if callable(value) else value
                    state.append((db, key, raw))
                else:
                    self._seq += 1
                    key = record_key(float(item.get("time") or time.time()), self._seq)
                    records.append((key, json.dumps(item, separators=(",", ":")).encode()))
            except Exception as exc:  # any bad item: skip it, never the batch
                self.skipped += 1
                request_id = item.get("request_id") if isinstance(item, dict) else None
                log.error("record_item_skipped", request_id=request_id, error=repr(exc)[:200])
        if records:
            self._write(lambda txn: self._put_records(txn, records))
            self.written += len(records)
        meta = {"dropped": self.dropped, "skipped": self.skipped, "restarts": self.restarts}
        state.append((b"meta", b"counters", json.dumps(meta).encode()))
        if state:
            self._write(lambda txn: self._put_state(txn, state))

    def _write(self, fill: Callable[[Any], None]) -> None:
        for _ in range(8):
            try:
                with self.env.begin(write=True, db=self.db) as txn:
                    fill(txn)
                return
            except lmdb.MapFullError:
                if not self._grow():
                    self._prune_bytes(0.5)
            except lmdb.Error as exc:
                self.skipped += 1
                log.error("record_write_failed", error=str(exc))
                return
        log.error("record_write_failed", error="map full after pruning")

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

    def _put_state(self, txn: Any, state: list[tuple[bytes, bytes, bytes | None]]) -> None:
        for db, key, raw in state:
            if raw is None:
                txn.delete(key, db=self.state_dbs[db])
            else:
                txn.put(key, raw, db=self.state_dbs[db])

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


def delete_oldest(txn: Any, n: int) -> None:
    cursor = txn.cursor()
    cursor.first()
    for _ in range(n):
        if not cursor.delete():
            break


def read_counters(path: Path) -> dict[str, int]:
    """The writer's loss counters (dropped, skipped, restarts) as last committed."""
    if not (path / "data.mdb").exists():
        return {}
    env = open_env(path, 1 << 20, readonly=True)
    try:
        db = env.open_db(b"meta", create=False)
        with env.begin(db=db) as txn:
            raw = txn.get(b"counters")
            return json.loads(raw) if raw else {}
    except (lmdb.Error, ValueError):
        return {}
    finally:
        env.close()


def read_records(path: Path, since: float | None = None) -> Iterator[dict[str, Any]]:
    """Records from oldest to newest (from ``since``, a Unix time), read-only."""
    if not (path / "data.mdb").exists():
        return
    env = open_env(path, 1 << 20, readonly=True)
    try:
        db = env.open_db(RECORDS, create=False)
        with env.begin(db=db) as txn:
            cursor = txn.cursor()
            found = cursor.set_range(record_key(since, 0)) if since else cursor.first()
            while found:
                yield json.loads(cursor.value())
                found = cursor.next()
    except lmdb.NotFoundError:
        return
    finally:
        env.close()
