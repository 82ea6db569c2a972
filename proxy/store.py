"""Per-request records in LMDB, written by one task so that no handler ever waits on disk.

Handlers hand a finished record to ``RecordStore.put`` (a queue append); the writer task
takes what has queued up, commits it in one transaction on a worker thread, and prunes the
oldest records past ``max_records``. A committed transaction survives a kill -9 (LMDB's
default durable commits); what was still queued is lost with the process.
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lmdb

from proxy.log import get_logger

log = get_logger("kvproxy.store")

RECORDS = b"records"
STATE_DBS = (b"tapes", b"slots")
BATCH = 512

# A state value, or a function that serializes it: called on the writer thread, so that
# encoding a long conversation never runs on the event loop.
StateValue = bytes | Callable[[], bytes]
# A queued state change: (database, key, value or None to delete).
StateOp = tuple[bytes, bytes, StateValue | None]


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
    def __init__(self, path: Path, max_records: int = 200_000, map_size: int = 1 << 30) -> None:
        self.path = path
        self.max_records = max_records
        self.env = open_env(path, map_size)
        self.db = self.env.open_db(RECORDS)
        self.state_dbs = {name: self.env.open_db(name) for name in STATE_DBS}
        self._queue: asyncio.Queue[dict[str, Any] | StateOp | None] = asyncio.Queue()
        self._seq = 0
        self._task: asyncio.Task[None] | None = None
        self.written = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._writer())

    def put(self, record: dict[str, Any]) -> None:
        """Queue one record; never blocks."""
        self._queue.put_nowait(record)

    def put_state(self, db: bytes, key: str, value: StateValue | None) -> None:
        """Queue a state change (a tape, say), committed in order with the records."""
        self._queue.put_nowait((db, key.encode(), value))

    def load_state(self, db: bytes) -> list[bytes]:
        """Every value of a state database, in key order (blocking: call off the loop)."""
        return [v for _, v in self.load_items(db)]

    def drop_state(self, db: bytes) -> None:
        """Empty a state database (blocking: call off the loop)."""
        with self.env.begin(write=True) as txn:
            txn.drop(self.state_dbs[db], delete=False)

    def load_items(self, db: bytes) -> list[tuple[str, bytes]]:
        with self.env.begin(db=self.state_dbs[db]) as txn:
            return [(bytes(k).decode(), bytes(v)) for k, v in txn.cursor()]

    async def flush(self) -> None:
        """Wait until everything queued so far is committed."""
        await self._queue.join()

    async def close(self) -> None:
        if self._task is not None:
            self._queue.put_nowait(None)
            await self._task
            self._task = None
        self.env.close()

    async def _writer(self) -> None:
        stop = False
        while not stop:
            batch = [await self._queue.get()]
            while len(batch) < BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            stop = any(item is None for item in batch)
            records = [r for r in batch if r is not None]
            try:
                if records:
                    await asyncio.to_thread(self._commit, records)
                    self.written += sum(isinstance(r, dict) for r in records)
            except lmdb.Error as exc:
                log.error("record_write_failed", error=str(exc), records=len(records))
            finally:
                for _ in batch:
                    self._queue.task_done()

    def _commit(self, records: list[dict[str, Any] | StateOp]) -> None:
        with self.env.begin(write=True, db=self.db) as txn:
            for record in records:
                if isinstance(record, tuple):
                    db, key, value = record
                    if value is None:
                        txn.delete(key, db=self.state_dbs[db])
                    else:
                        raw = value() if callable(value) else value
                        txn.put(key, raw, db=self.state_dbs[db])
                    continue
                self._seq += 1
                key = record_key(record.get("time") or time.time(), self._seq)
                txn.put(key, json.dumps(record, separators=(",", ":")).encode())
            excess = txn.stat(self.db)["entries"] - self.max_records
            if excess > 0:
                cursor = txn.cursor()
                cursor.first()
                for _ in range(excess):
                    if not cursor.delete():
                        break


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
