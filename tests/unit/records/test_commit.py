"""Issue 21: a full disk lost 15 records while the store reported "skipped 34". A write the
disk refuses is now kept and retried (within a bound), and every item given up is counted
exactly, by why."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import lmdb

from proxy.records.read import read_counters, read_records
from proxy.records.store import RecordStore


class FullDisk:
    """The store's environment, with every write transaction refused (ENOSPC, as LMDB
    reports a full disk) while ``full``."""

    def __init__(self, env: Any) -> None:
        self.env = env
        self.full = True

    def begin(self, *args: Any, write: bool = False, **kwargs: Any) -> Any:
        if write and self.full:
            raise lmdb.DiskError("mdb_txn_commit: No space left on device")
        return self.env.begin(*args, write=write, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.env, name)


def rec(i: int, **extra: object) -> dict[str, object]:
    return {"time": 1_000_000 + i, "request_id": f"r{i}", "status": 200, **extra}


def ids(path: Path) -> list[str]:
    return [r["request_id"] for r in read_records(path)]


async def test_records_the_disk_refused_are_written_once_it_takes_them(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "db")
    disk = store.env = FullDisk(store.env)  # type: ignore[assignment]
    store.start()
    for i in range(49):
        store.put(rec(i))
    store.put_state(b"tapes", "lineage", b"tape")
    await store.flush()
    assert store.held == 49 + 2  # the records, the tape and the counters, none given up
    assert (store.lost, store.skipped, store.dropped) == (0, 0, 0)
    disk.full = False
    store.put(rec(49))
    await store.flush()
    assert store.held == 0 and store.load_items(b"tapes") == [("lineage", b"tape")]
    await store.close()
    assert ids(tmp_path / "db") == [f"r{i}" for i in range(50)]
    assert (store.lost, store.skipped, store.dropped, store.written) == (0, 0, 0, 50)


async def test_the_writer_retries_by_itself(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "db")
    disk = store.env = FullDisk(store.env)  # type: ignore[assignment]
    store.start()
    for i in range(5):
        store.put(rec(i))
    await store.flush()
    assert store.held and store.refusals >= 1
    disk.full = False
    for _ in range(600):  # no new record arrives: the writer's own retry writes them
        if not store.held:
            break
        await asyncio.sleep(0.1)
    assert store.held == 0
    await store.close()
    assert ids(tmp_path / "db") == [f"r{i}" for i in range(5)]


async def test_what_a_full_disk_still_refuses_at_close_is_counted_exactly(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "db")
    store.start()
    for i in range(10):
        store.put(rec(i))
    await store.flush()
    store.env = FullDisk(store.env)  # type: ignore[assignment]
    for i in range(10, 25):
        store.put(rec(i))
    store.put_state(b"tapes", "lineage", b"tape")
    await store.close()
    assert store.records_lost == {"dropped": 0, "skipped": 0, "lost": 15}
    assert (store.lost, store.skipped, store.dropped) == (16, 0, 0)  # 15 records, 1 tape
    assert ids(tmp_path / "db") == [f"r{i}" for i in range(10)]


async def test_the_hold_is_bounded_and_what_it_gives_up_is_counted(tmp_path: Path) -> None:
    size = len(json.dumps(rec(10, padding="x" * 1000), separators=(",", ":")))
    store = RecordStore(tmp_path / "db", max_held_bytes=10 * size + 200)
    disk = store.env = FullDisk(store.env)  # type: ignore[assignment]
    store.start()
    for i in range(40):
        store.put(rec(i, padding="x" * 1000))
        await store.flush()  # one refused write per record: the hold is bounded each time
    disk.full = False
    store.put(rec(40))
    await store.close()
    kept = ids(tmp_path / "db")
    assert len(kept) + store.records_lost["lost"] == 41
    assert kept[-1] == "r40" and kept == [f"r{i}" for i in range(41 - len(kept), 41)]
    assert store.records_lost["lost"] >= 30 and store.skipped == 0 and store.dropped == 0
    assert read_counters(tmp_path / "db")["records_lost"] == store.records_lost["lost"]


async def test_an_item_larger_than_the_map_is_skipped_alone(tmp_path: Path) -> None:
    """A tiny map (--records-max-bytes 1 MiB): a record that cannot fit is skipped, counted,
    and neither blocks the others nor prunes them away."""
    store = RecordStore(tmp_path / "db", max_bytes=1024 * 1024, map_size=1024 * 1024)
    store.start()
    for i in range(5):
        store.put(rec(i))
    store.put(rec(5, padding="x" * 2_000_000))
    for i in range(6, 10):
        store.put(rec(i))
    await store.close()
    assert ids(tmp_path / "db") == [f"r{i}" for i in range(10) if i != 5]
    assert store.records_lost == {"dropped": 0, "skipped": 1, "lost": 0}


def test_a_file_size_limit_refuses_writes_and_nothing_is_lost(tmp_path: Path) -> None:
    """The operating system refuses the writes (RLIMIT_FSIZE: EFBIG, as a full disk gives
    ENOSPC); run in a child, whose limit and signals are its own."""
    code = textwrap.dedent("""
        import asyncio, json, resource, signal, sys
        from pathlib import Path
        from proxy.records.read import read_records
        from proxy.records.store import RecordStore

        async def main():
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            path = Path(sys.argv[1])
            store = RecordStore(path)
            store.start()
            store.put({"time": 1, "request_id": "r0"})
            await store.flush()
            size = (path / "data.mdb").stat().st_size
            soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
            resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
            for i in range(1, 200):
                store.put({"time": 1 + i, "request_id": f"r{i}", "padding": "x" * 2000})
            await store.flush()
            refused = {"held": store.held, "refusals": store.refusals}
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            store.put({"time": 1000, "request_id": "r200"})
            await store.close()
            print(json.dumps({**refused, "lost": store.lost, "skipped": store.skipped,
                              "n": len(list(read_records(path)))}))

        asyncio.run(main())
    """)
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "db")],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.splitlines()[-1])
    assert got["refusals"] >= 1 and got["held"] >= 199
    assert (got["lost"], got["skipped"], got["n"]) == (0, 0, 201)
