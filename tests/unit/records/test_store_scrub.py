"""Issue 21: after ``--keep-tapes memory`` dropped the stored tapes, LMDB's freed pages
still held their text. drop_state now leaves none of it anywhere in the file."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from proxy.records.damage import check_store
from proxy.records.read import read_records
from proxy.records.store import RecordStore

SECRET = b"PIN-4711-do-not-keep"


async def fill_tapes(path: Path) -> None:
    """A disk-mode run: tapes rewritten many times (each version left in freed pages), one
    large enough for overflow pages, and records beside them."""
    store = RecordStore(path)
    store.start()
    for turn in range(30):
        for lineage in range(5):
            store.put_state(b"tapes", f"l{lineage}", SECRET + b" turn %d " % turn + b"t" * 300)
        store.put({"time": 1_000_000 + turn, "request_id": f"r{turn}", "status": 200})
        await store.flush()
    store.put_state(b"tapes", "long", SECRET + b"x" * 20_000)
    await store.close()
    assert SECRET in (path / "data.mdb").read_bytes()


async def test_drop_state_leaves_no_tape_text_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "records"
    await fill_tapes(path)
    store = RecordStore(path)
    store.start()  # as store_ctx does: the writer runs while the tapes are dropped
    await asyncio.to_thread(store.drop_state, b"tapes")
    store.put({"time": 2_000_000, "request_id": "after", "status": 200})
    await store.flush()
    assert store.load_items(b"tapes") == []
    await store.close()
    assert SECRET not in (path / "data.mdb").read_bytes()
    want = [f"r{i}" for i in range(30)] + ["after"]
    assert [r["request_id"] for r in read_records(path)] == want
    assert not (path / "compacting").exists()
    assert (path / "data.mdb").stat().st_mode & 0o777 == 0o600


async def test_a_tape_written_again_is_scrubbed_again(tmp_path: Path) -> None:
    """Memory mode, then disk mode (tapes written), then memory mode again."""
    path = tmp_path / "records"
    store = RecordStore(path)
    store.drop_state(b"tapes")  # nothing there: the file is marked clean
    store.start()
    store.put_state(b"tapes", "l", SECRET)
    store.put_state(b"tapes", "l", None)  # deleted again, but its page was freed, not wiped
    await store.close()
    store = RecordStore(path)
    store.drop_state(b"tapes")
    await store.close()
    assert SECRET not in (path / "data.mdb").read_bytes()


async def test_the_swap_is_safe_while_another_process_has_the_store_open(tmp_path: Path) -> None:
    """A `kvproxy stats` reading while serve starts in memory mode keeps its own (old) file;
    the store serve goes on with is sound and takes writes."""
    path = tmp_path / "records"
    await fill_tapes(path)
    reader = subprocess.Popen(
        [sys.executable, "-c", "import sys, lmdb; env = lmdb.open(sys.argv[1], max_dbs=4, "
         "readonly=True); txn = env.begin(); print('open', flush=True); sys.stdin.read()",
         str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert reader.stdout is not None and reader.stdout.readline().strip() == "open"
        store = RecordStore(path)
        store.start()
        await asyncio.to_thread(store.drop_state, b"tapes")
        for i in range(200):
            store.put({"time": 3_000_000 + i, "request_id": f"n{i}", "status": 200})
        await store.close()
    finally:
        reader.communicate("", timeout=30)
    assert SECRET not in (path / "data.mdb").read_bytes()
    assert check_store(path).sound
    assert len(list(read_records(path))) == 230
