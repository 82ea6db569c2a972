"""Per-request records in LMDB, written by one task so that no handler ever waits on disk.

Handlers hand a finished record to ``RecordStore.put`` (a queue append); the writer task
takes what has queued up, commits it in one transaction on a worker thread, and prunes the
oldest records past ``max_records``. A committed transaction survives a kill -9 (LMDB's
default durable commits); what was still queued is lost with the process.

A write the disk refuses (full, failing) is kept in memory, within a bound, and retried;
what is given up is counted, item by item. A damaged file (truncated, a bad page) would
kill the process that maps it (SIGBUS, SIGSEGV, an abort), so before any open the file is
checked (its size against its meta page, then a full read in a child process); a damaged
store is moved aside, kept for inspection, and a fresh one started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb

from proxy.core.log import get_logger

log = get_logger("kvproxy.store")

RECORDS = b"records"
STATE_DBS = (b"tapes", b"slots", b"meta")
BATCH = 512
MAX_QUEUE = 50_000
MIN_MAP = 1024 * 1024
DEFAULT_MAX_BYTES = 1 << 30
# Past this share of --records-max-bytes, the oldest quarter of the records goes.
PRUNE_AT = 0.8
# Encoded items a refused write keeps for the next try, at most (then the oldest go).
MAX_HELD_BYTES = 64 * 1024 * 1024
RETRY_FIRST, RETRY_MAX = 0.5, 30.0  # seconds between retries of a refused write
CHECK_TIMEOUT = 120.0  # seconds the full read of a store may take before it counts as damage
# Set in the meta database once the freed pages are known to hold no tape text.
SCRUBBED = b"scrubbed:tapes"

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

# LMDB's meta pages (lmdb.h, 0.9): a 16-byte page header, then magic, version, address,
# map size, two 48-byte database records (the first's leading field is the page size),
# the last page number and the transaction id.
META_MAGIC = 0xBEEFC0DE
META_HEAD = 16
META_LAST_PAGE = META_HEAD + 4 + 4 + 8 + 8 + 2 * 48


@dataclass(frozen=True)
class StoreCheck:
    """What the check of a store found: ``reason`` is empty when it is sound; ``in_use``:
    another process has the environment open."""

    reason: str = ""
    in_use: bool = False

    @property
    def sound(self) -> bool:
        return not self.reason


@dataclass(frozen=True)
class Damage:
    """A damaged store: where it was, why, and where it was moved (None: left in place,
    because another process had it open)."""

    path: Path
    reason: str
    moved_to: Path | None

    def message(self) -> str:
        where = (
            f"moved to {self.moved_to} (kept for inspection); a fresh store starts"
            if self.moved_to is not None
            else "left in place, in use by a running kvproxy: stop it, and its next start "
            "moves the store aside"
        )
        return f"the record store {self.path} is damaged ({self.reason}); {where}"


def meta_damage(data: Path) -> str:
    """Why the file cannot be what its meta pages say (empty when it can): a file shorter
    than the newest meta page's last page is truncated, and mapping it would SIGBUS."""
    size = data.stat().st_size
    if size == 0:
        return ""  # created, never written: LMDB starts it afresh
    with data.open("rb") as f:
        first = f.read(META_LAST_PAGE + 16)
        if len(first) < META_LAST_PAGE + 16:
            return f"truncated: {size} bytes, shorter than its meta page"
        psize = struct.unpack_from("=I", first, META_HEAD + 24)[0]
        if psize < 512 or psize > 65536 or psize & (psize - 1):
            return f"meta page 0 names a page size of {psize}"
        f.seek(psize)
        second = f.read(META_LAST_PAGE + 16)
    if len(second) < META_LAST_PAGE + 16:
        return f"truncated: {size} bytes, shorter than its two meta pages"
    metas = []
    for index, page in enumerate((first, second)):
        if struct.unpack_from("=I", page, META_HEAD)[0] != META_MAGIC:
            return f"meta page {index} is not an LMDB meta page"
        metas.append(struct.unpack_from("=QQ", page, META_LAST_PAGE))
    last_page, _ = max(metas, key=lambda m: m[1])  # LMDB uses the newer transaction's
    need = (last_page + 1) * psize
    if size < need:
        return f"truncated: {size} bytes, its pages need {need}"
    return ""


# The child's part of the check: whether another process has the environment open (LMDB
# holds a shared lock on the first byte of lock.mdb while it does), then every record of
# every database read, values included. A bad page kills this child, not the caller.
WALK = r"""
import fcntl, json, os, sys
import lmdb
path = sys.argv[1]
in_use = False
try:
    fd = os.open(os.path.join(path, "lock.mdb"), os.O_RDWR)
except OSError:
    fd = -1
if fd >= 0:
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
    except OSError:
        in_use = True
    os.close(fd)
print(json.dumps({"in_use": in_use}), flush=True)
try:
    env = lmdb.open(path, readonly=True, lock=fd >= 0, max_dbs=64, map_size=1 << 20)
    with env.begin() as txn:
        names = [bytes(k) for k, _ in txn.cursor()]
    for name in names:
        db = env.open_db(name, create=False)
        with env.begin(db=db) as txn:
            for _ in txn.cursor():
                pass
except lmdb.Error as exc:
    print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
    sys.exit(3)
"""


def check_store(path: Path, timeout: float = CHECK_TIMEOUT) -> StoreCheck:
    """Whether the store at ``path`` can be opened and read without killing the process:
    its size against its meta pages here, then a full read in a child process (a signal
    or an LMDB error there is damage). A missing store is sound (a fresh one starts)."""
    data = path / "data.mdb"
    try:
        if not data.exists():
            return StoreCheck()
        reason = meta_damage(data)
    except OSError as exc:
        return StoreCheck(f"unreadable: {exc}")
    try:
        done = subprocess.run([sys.executable, "-c", WALK, str(path)], capture_output=True,
                              text=True, timeout=timeout, check=False)  # fmt: skip
    except subprocess.TimeoutExpired:
        return StoreCheck(reason or f"a full read did not finish within {timeout:.0f} s")
    except OSError as exc:  # no process to spare: the size check is what there is
        log.warning("record_store_check_skipped", path=str(path), error=str(exc))
        return StoreCheck(reason)
    lines = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]
    in_use = bool(lines and lines[0].get("in_use"))
    if reason:
        return StoreCheck(reason, in_use)
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        return StoreCheck(f"reading it killed the reader with {name}", in_use)
    if done.returncode != 0:
        error = lines[-1].get("error") if lines else None
        return StoreCheck(error or done.stderr.strip()[-300:] or f"exit {done.returncode}", in_use)
    return StoreCheck("", in_use)


def set_aside(path: Path) -> Path:
    """Rename the store's directory to ``<name>.damaged-<UTC time>`` beside it."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
    path.rename(target)
    return target


def guard_store(path: Path, writer: bool) -> Damage | None:
    """Check the store; move a damaged one aside. A writer (serve) always moves it, since it
    needs a store that works; a reader (stats, explain) leaves one that another process has
    open where it is and reads nothing."""
    found = check_store(path)
    if found.sound:
        return None
    moved = set_aside(path) if writer or not found.in_use else None
    return Damage(path, found.reason, moved)


def log_damage(damage: Damage) -> None:
    log.error("record_store_damaged", path=str(damage.path), reason=damage.reason,
              moved_to=str(damage.moved_to) if damage.moved_to else None,
              detail=damage.message())  # fmt: skip


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
    oldest first by count and by size. A write the disk refuses is held (up to
    ``max_held_bytes``) and retried; every item given up is counted in ``dropped``
    (queue full), ``skipped`` (could not be encoded or stored) or ``lost`` (the disk
    refused it past the bound, or still at close)."""

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
        # Every use of the environment holds this lock: set_mapsize and the compacting
        # swap of drop_state need no other transaction open in the process.
        self._env_lock = threading.Lock()
        self.env = open_env(path, min(max(map_size, MIN_MAP), self.max_bytes))
        self._open_dbs()
        self._queue: deque[Item] = deque()
        self._wake = asyncio.Event()
        self._pending = 0
        self._drained = asyncio.Event()
        self._drained.set()
        self._seq = 0
        self._task: asyncio.Task[None] | None = None
        self._closing = False
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

    def _count(self, why: str, is_record: bool, n: int = 1) -> None:
        """Count ``n`` items given up, by why (dropped, skipped, lost)."""
        setattr(self, why, getattr(self, why) + n)
        if is_record:
            self.records_lost[why] += n

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
            if db == b"tapes" and (had or not scrubbed) and self._compact():
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

    def _close_env(self) -> None:
        """Close the environment once no commit runs (a cancelled writer's retry may still
        be on its thread); what is held then is given up, counted and logged."""
        with self._env_lock:
            if self.held:
                self._give_up(len(self._held_records), len(self._held_state))
                log.error("records_lost_at_close", lost=self.lost,
                          records_lost=self.records_lost)  # fmt: skip
            self.env.close()

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
            if db == b"tapes":  # tape text in the file again: a later drop must scrub
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


def delete_oldest(txn: Any, n: int) -> None:
    cursor = txn.cursor()
    cursor.first()
    for _ in range(n):
        if not cursor.delete():
            break


def walk_records(cursor: Any, since: float | None) -> Iterator[dict[str, Any]]:
    """Records from ``since`` on; one whose bytes are not JSON (a flipped byte) is passed."""
    found = cursor.set_range(record_key(since, 0)) if since else cursor.first()
    while found:
        with contextlib.suppress(ValueError):
            yield json.loads(cursor.value())
        found = cursor.next()


def _guarded(path: Path, guard: bool, on_damage: Callable[[Damage], None]) -> bool:
    """Whether the store at ``path`` may be opened (checked first when ``guard``)."""
    if not (path / "data.mdb").exists():
        return False
    damage = guard_store(path, writer=False) if guard else None
    if damage is not None:
        on_damage(damage)
    return damage is None


def read_counters(path: Path, guard: bool = True,
                  on_damage: Callable[[Damage], None] = log_damage) -> dict[str, int]:  # fmt: skip
    """The writer's loss counters (dropped, skipped, lost, restarts, and of those the
    records) as last committed. ``guard``: check the store first (a damaged one is moved
    aside, reported to ``on_damage``, and reads as empty)."""
    if not _guarded(path, guard, on_damage):
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


def read_records(path: Path, since: float | None = None, guard: bool = True,
                 on_damage: Callable[[Damage], None] = log_damage,
                 ) -> Iterator[dict[str, Any]]:  # fmt: skip
    """Records from oldest to newest (from ``since``, a Unix time), read-only. ``guard``:
    check the store first (a damaged one is moved aside, reported to ``on_damage``, and
    reads as empty); pass False only right after ``guard_store``."""
    if not _guarded(path, guard, on_damage):
        return
    try:
        env = open_env(path, 1 << 20, readonly=True)
    except lmdb.Error as exc:
        log.error("record_store_unreadable", path=str(path), error=str(exc))
        return
    try:
        db = env.open_db(RECORDS, create=False)
        with env.begin(db=db) as txn:
            yield from walk_records(txn.cursor(), since)
    except lmdb.NotFoundError:
        return
    finally:
        env.close()
