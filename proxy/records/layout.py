"""The store's layout in LMDB, shared by its writer and its readers: the database names,
the record keys (time-ordered), opening an environment, and walking or pruning records."""

from __future__ import annotations

import contextlib
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb

RECORDS = b"records"
STATE_DBS = (b"tapes", b"slots", b"meta", b"responses")
# State that holds conversation text: dropped by a compacting copy (``drop_state``).
TEXT_DBS = (b"tapes", b"responses")
MIN_MAP = 1024 * 1024
# Set in the meta database once the freed pages are known to hold no tape text.
SCRUBBED = b"scrubbed:tapes"


def record_key(t: float, seq: int) -> bytes:
    """Big-endian nanoseconds then a sequence number: keys sort by time."""
    return struct.pack(">QI", int(t * 1e9), seq & 0xFFFFFFFF)


def key_time(key: bytes) -> float:
    return struct.unpack(">QI", key)[0] / 1e9


def open_env(path: Path, map_size: int, readonly: bool = False) -> lmdb.Environment:
    if not readonly:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return lmdb.open(
        str(path), map_size=map_size, max_dbs=8, readonly=readonly, lock=True, mode=0o600
    )


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
