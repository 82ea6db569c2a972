"""Per-request records in LMDB, written by one task so that no handler ever waits on disk.

Handlers hand a finished record to ``RecordStore.put`` (a queue append); the writer task
takes what has queued up and commits it in one transaction on a worker thread
(``proxy.records.commit``). What was still queued is lost with the process. The store is
checked before it is opened (``proxy.records.damage``); other processes read it through
``proxy.records.read``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections import deque
from pathlib import Path
from typing import Any

import lmdb

from proxy.core.log import get_logger
from proxy.records.commit import Committer, Item, StateValue
from proxy.records.layout import SCRUBBED, TEXT_DBS, open_env, walk_records

log = get_logger("kvproxy.store")

BATCH = 512
RETRY_FIRST, RETRY_MAX = 0.5, 30.0  # seconds between retries of a refused write


class RecordStore(Committer):
    """Records and state changes, queued by handlers (never blocking) and committed by one
    writer task on a worker thread. The writer outlives any bad item (logged with its
    request id and skipped) and is restarted if it ever dies; the queue drops its oldest
    item beyond ``max_queue``; the map grows up to ``max_bytes`` and records are pruned
    oldest first by count and by size. A write the disk refuses is held (up to
    ``max_held_bytes``) and retried; every item given up is counted in ``dropped``
    (queue full), ``skipped`` (could not be encoded or stored) or ``lost`` (the disk
    refused it past the bound, or still at close)."""

    def __init__(self, path: Path, **limits: int) -> None:
        """``limits``: those of ``Committer`` (max_records, map_size, max_bytes,
        max_queue, max_held_bytes)."""
        super().__init__(path, **limits)
        self._queue: deque[Item] = deque()
        self._wake = asyncio.Event()
        self._pending = 0
        self._drained = asyncio.Event()
        self._drained.set()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._writer())
        self._task.add_done_callback(self._on_writer_exit)

    def _on_writer_exit(self, task: asyncio.Task[None]) -> None:
        """A writer that failed is restarted; one cancelled is the process shutting down
        (a start that failed cancels it without ``close``), not a death to report."""
        if self._closing or task.cancelled():
            return
        error = None if task.cancelled() else task.exception()
        log.error("record_writer_died", error=repr(error), restarts=self.restarts + 1)
        self.restarts += 1
        self.start()

    def _enqueue(self, item: Item) -> None:
        if len(self._queue) >= self.max_queue:
            old = self._queue.popleft()
            self._count("dropped", not isinstance(old, tuple))
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
        """Empty a state database and leave none of its text in the file (blocking: call
        off the loop). LMDB copies on write: every earlier version of a value stays in
        freed pages until they are reused, so overwriting or deleting is not enough; the
        environment is rewritten by a compacting copy (live pages only) and swapped in."""
        with self._env_lock:
            with self.env.begin(write=True) as txn:
                had = txn.stat(self.state_dbs[db])["entries"]
                scrubbed = txn.get(SCRUBBED, db=self.state_dbs[b"meta"]) is not None
                txn.drop(self.state_dbs[db], delete=False)
            if db in TEXT_DBS and (had or not scrubbed) and self._compact():
                with self.env.begin(write=True) as txn:
                    txn.put(SCRUBBED, b"1", db=self.state_dbs[b"meta"])

    def _compact(self) -> bool:
        """Replace data.mdb by a compacting copy of itself (caller holds the lock)."""
        tmp = self.path / "compacting"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir(mode=0o700)
            self.env.copy(str(tmp), compact=True)
            (tmp / "data.mdb").chmod(0o600)  # LMDB creates the copy 0666 less the umask
            with open(tmp / "data.mdb", "rb") as f:
                os.fsync(f.fileno())
        except (lmdb.Error, OSError) as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            log.error("record_store_compact_failed", error=str(exc),
                      detail="freed pages may still hold dropped tape text")  # fmt: skip
            return False
        map_size = self.env.info()["map_size"]
        self.env.close()
        os.replace(tmp / "data.mdb", self.path / "data.mdb")
        # The lock file remembers the old file's last transaction; a fresh one (another
        # process that has the old file open keeps the old lock file with it) starts right.
        with contextlib.suppress(FileNotFoundError):
            (self.path / "lock.mdb").unlink()
        shutil.rmtree(tmp, ignore_errors=True)
        self.env = open_env(self.path, map_size)
        self._open_dbs()
        return True

    def load_items(self, db: bytes) -> list[tuple[str, bytes]]:
        with self._env_lock, self.env.begin(db=self.state_dbs[db]) as txn:
            return [(bytes(k).decode("utf-8", "replace"), bytes(v)) for k, v in txn.cursor()]

    def records(self, since: float | None = None) -> list[dict[str, Any]]:
        """The records from ``since`` (a Unix time), read from this open (checked) store
        (blocking: call off the loop)."""
        with self._env_lock, self.env.begin(db=self.db) as txn:
            return list(walk_records(txn.cursor(), since))

    async def flush(self) -> None:
        """Wait until everything queued so far was tried: committed, skipped, or held
        because the disk refused it (``held``)."""
        await self._drained.wait()

    async def close(self) -> None:
        if self._task is not None:
            await self.flush()
            self._closing = True
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.held:  # one last try; what the disk still refuses is lost, and counted
            await asyncio.to_thread(self._commit, [])
        await asyncio.to_thread(self._close_env)

    async def _writer(self) -> None:
        delay = RETRY_FIRST
        while True:
            if not self._queue:
                self._wake.clear()
                if not self.held:
                    await self._wake.wait()
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
            batch = [self._queue.popleft() for _ in range(min(BATCH, len(self._queue)))]
            try:
                ok = await asyncio.to_thread(self._commit, batch)
            finally:
                self._done(len(batch))
            delay = RETRY_FIRST if ok else min(delay * 2, RETRY_MAX)
