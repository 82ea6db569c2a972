"""A damaged store file (truncated, a bad page) would kill the process that maps it
(SIGBUS, SIGSEGV, an abort), so before any open the file is checked: its size against its
meta page here, then a full read in a child process. A damaged store is moved aside, kept
for inspection, and a fresh one started."""

from __future__ import annotations

import json
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from proxy.core.log import get_logger

log = get_logger("kvproxy.store")

CHECK_TIMEOUT = 120.0  # seconds the full read of a store may take before it counts as damage

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
