"""LMDB records: one writer task, commits off the event loop, oldest-first pruning."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from proxy.stats import parse_since, render, summarize
from proxy.store import RecordStore, read_records


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


def test_missing_database_reads_as_empty(tmp_path: Path) -> None:
    assert list(read_records(tmp_path / "nothing")) == []


def test_summary_hit_rate_agreement_and_causes() -> None:
    records = [
        rec(1, prompt_tokens=1000, cached_tokens=0, predicted_cached=0, prefilled_tokens=1000,
            prefill_ms=2000.0, slot="0/0", miss_cause="cold"),
        rec(2, prompt_tokens=1100, cached_tokens=1000, predicted_cached=1000,
            prefilled_tokens=100, prefill_ms=200.0, slot="0/0"),
        rec(3, prompt_tokens=1100, cached_tokens=500, predicted_cached=1000,
            prefilled_tokens=600, prefill_ms=1200.0, slot="0/1",
            miss_cause="diverged", miss_token=500),
        rec(4, status=502),
    ]  # fmt: skip
    total, per_slot = summarize(records)
    assert total.requests == 3
    assert total.hit_rate == 1500 / 3200
    assert (total.compared, total.exact, total.abs_error) == (3, 2, 500)
    assert dict(total.causes) == {"cold": 1, "diverged": 1}
    assert total.seconds_saved == 1500 * (3400 / 1700) / 1000
    assert set(per_slot) == {"0/0", "0/1"}
    text = render(total, per_slot)
    assert "hit rate by tokens 46.9%" in text and "2/3 requests" in text


def test_parse_since() -> None:
    assert parse_since("2h", now=10_000.0) == 10_000.0 - 7200
    assert parse_since("1700000000") == 1_700_000_000.0


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
