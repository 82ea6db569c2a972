"""LMDB records: one writer task, commits off the event loop, oldest-first pruning."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from proxy.records.read import read_records
from proxy.records.store import RecordStore


def rec(i: int, **extra: object) -> dict[str, object]:
    return {"time": 1_000_000 + i, "request_id": f"r{i}", "status": 200, **extra}


async def test_records_are_committed_in_order_and_read_back(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "db")
    store.start()
    for i in range(50):
        store.put(rec(i))
    await store.flush()
    await store.close()
    got = list(read_records(tmp_path / "db"))
    assert [r["request_id"] for r in got] == [f"r{i}" for i in range(50)]
    assert [r["request_id"] for r in read_records(tmp_path / "db", since=1_000_040)] == [
        f"r{i}" for i in range(40, 50)
    ]


async def test_oldest_records_are_pruned_past_the_limit(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "db", max_records=10)
    store.start()
    for i in range(25):
        store.put(rec(i))
    await store.flush()
    await store.close()
    assert [r["request_id"] for r in read_records(tmp_path / "db")] == [
        f"r{i}" for i in range(15, 25)
    ]


async def test_commits_run_off_the_event_loop_thread(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "db")
    threads: list[int] = []
    commit = store._commit

    def spy(records: list[dict[str, object]]) -> None:
        threads.append(threading.get_ident())
        commit(records)

    store._commit = spy  # type: ignore[method-assign]
    store.start()
    store.put(rec(1))  # put is synchronous: a handler never awaits the disk
    await store.flush()
    await store.close()
    assert threads and threading.get_ident() not in threads


async def test_close_drains_what_is_queued(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "db")
    store.start()
    for i in range(1000):
        store.put(rec(i))
    await asyncio.wait_for(store.close(), 30)
    assert len(list(read_records(tmp_path / "db"))) == 1000


async def test_state_serializers_run_on_the_writer_thread(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "db")
    threads: list[int] = []

    def dump() -> bytes:
        threads.append(threading.get_ident())
        return b"tape"

    store.start()
    store.put_state(b"tapes", "lineage", dump)
    store.put_state(b"tapes", "gone", b"x")
    store.put_state(b"tapes", "gone", None)
    await store.flush()
    assert store.load_items(b"tapes") == [("lineage", b"tape")]
    await store.close()
    assert threads and threading.get_ident() not in threads


async def test_a_bad_item_is_skipped_and_the_writer_keeps_going(tmp_path: Path) -> None:
    """Issue 10: one state value that fails to serialize (token ids beyond 32 bits) killed
    the writer for good; now the item is skipped and the rest of its batch commits."""
    store = RecordStore(tmp_path / "db")
    store.start()

    def overflow() -> bytes:
        raise OverflowError("signed integer is greater than maximum")

    store.put(rec(1))
    store.put_state(b"slots", "bad", overflow)
    store.put({"time": 1_000_002, "request_id": "r2", "bad": object()})  # not JSON
    store.put(rec(3))
    await store.flush()
    store.put(rec(4))
    store.put_state(b"tapes", "ok", b"fine")
    await store.flush()
    await store.close()
    assert [r["request_id"] for r in read_records(tmp_path / "db")] == ["r1", "r3", "r4"]
    assert store.skipped == 2


async def test_the_queue_is_bounded_dropping_the_oldest(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "db", max_queue=5)
    for i in range(20):  # the writer is not running: nothing drains
        store.put(rec(i))
    assert store.dropped == 15
    store.start()
    await store.close()
    assert [r["request_id"] for r in read_records(tmp_path / "db")] == [
        f"r{i}" for i in range(15, 20)
    ]


async def test_a_writer_that_dies_is_restarted(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "db")
    commit = store._commit
    calls = {"n": 0}

    def crash_once(items: list) -> None:  # type: ignore[type-arg]
        calls["n"] += 1
        if calls["n"] == 1:
            raise SystemError("writer bug")
        commit(items)

    store._commit = crash_once  # type: ignore[method-assign]
    store.start()
    store.put(rec(1))
    await asyncio.sleep(0.3)
    store.put(rec(2))
    await asyncio.wait_for(store.flush(), 10)
    await store.close()
    assert store.restarts == 1
    assert [r["request_id"] for r in read_records(tmp_path / "db")] == ["r2"]


async def test_the_map_grows_and_pruning_keeps_the_size_bounded(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "db", max_bytes=4 * 1024 * 1024, map_size=1024 * 1024)
    store.start()
    for i in range(3000):
        store.put(rec(i, padding="x" * 2000))
        if i % 500 == 0:
            await store.flush()
    await store.close()
    got = [r["request_id"] for r in read_records(tmp_path / "db")]
    assert got[-1] == "r2999" and 100 < len(got) < 3000
    assert (tmp_path / "db" / "data.mdb").stat().st_size <= 4 * 1024 * 1024


async def test_the_open_store_reads_its_own_records(tmp_path: Path) -> None:
    """--warm auto reads through the store serve opened (and checked), not a second open."""
    store = RecordStore(tmp_path / "records")
    store.start()
    for i in range(10):
        store.put({"time": 1_000_000 + i, "request_id": f"r{i}", "status": 200})
    await store.flush()
    assert [r["request_id"] for r in store.records(1_000_005)] == [f"r{i}" for i in range(5, 10)]
    await store.close()
