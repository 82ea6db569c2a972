"""Reading a store that another process (serve) may be writing: the records and the
writer's loss counters, read-only, for stats, explain, --warm auto and the tests. Each read
checks the store first (``proxy.records.damage``): a damaged one reads as empty."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lmdb

from proxy.core.log import get_logger
from proxy.records.damage import Damage, guard_store, log_damage
from proxy.records.layout import RECORDS, open_env, walk_records

log = get_logger("kvproxy.store")


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
