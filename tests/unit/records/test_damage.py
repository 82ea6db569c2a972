"""Issue 21: a damaged LMDB file (truncated, or one page overwritten) crashed ``serve`` and
``stats`` with SIGBUS and aborted ``stats`` and every ``--warm auto`` start. Each check runs
the code under test in a child process, so a regression crashes that child, not pytest."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from proxy.records.damage import check_store
from proxy.records.store import RecordStore

CLI = "import sys; from proxy.cli.main import main; sys.exit(main(sys.argv[1:]))"


def populate(records_dir: Path, n: int = 3000) -> None:
    """A real store, as serve leaves it: records (with padding, to fill many pages) and a
    tape."""

    async def fill() -> None:
        store = RecordStore(records_dir)
        store.start()
        for i in range(n):
            store.put({"time": 1_000_000 + i, "request_id": f"r{i}", "status": 200,
                       "padding": "p" * 300})  # fmt: skip
        store.put_state(b"tapes", "lineage", b"tape text")
        await store.close()

    asyncio.run(fill())


def truncate(records_dir: Path) -> None:
    data = records_dir / "data.mdb"
    with data.open("r+b") as f:
        f.truncate(data.stat().st_size // 2)


def corrupt_page(records_dir: Path) -> None:
    """One page in the middle of the file overwritten (a bad sector, a stray write)."""
    data = records_dir / "data.mdb"
    pages = data.stat().st_size // 4096
    with data.open("r+b") as f:
        f.seek((pages // 2) * 4096)
        f.write(b"\x07" * 4096)


DAMAGE = {"truncated": truncate, "corrupt-page": corrupt_page}


def child(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def damaged_dirs(data_dir: Path) -> list[Path]:
    return sorted(data_dir.glob("records.damaged-*"))


@pytest.fixture(params=sorted(DAMAGE))
def damaged(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A data dir whose record store is damaged one way or the other."""
    populate(tmp_path / "records")
    DAMAGE[request.param](tmp_path / "records")
    return tmp_path


def test_a_sound_store_passes_the_check(tmp_path: Path) -> None:
    populate(tmp_path / "records", n=200)
    assert check_store(tmp_path / "records").sound
    assert check_store(tmp_path / "missing").sound


def test_the_check_finds_the_damage(damaged: Path) -> None:
    result = check_store(damaged / "records")
    assert not result.sound and result.reason


def test_serve_store_start_moves_the_damage_aside(damaged: Path) -> None:
    """RecordStore (serve's store_ctx) on a damaged file: it starts on a fresh store, the
    damaged one kept beside it, and the fresh store takes and returns records."""
    code = textwrap.dedent("""
        import asyncio, json, sys
        from pathlib import Path
        from proxy.records.read import read_records
        from proxy.records.store import RecordStore

        async def main():
            store = RecordStore(Path(sys.argv[1]))
            store.start()
            store.put({"time": 2_000_000, "request_id": "fresh", "status": 200})
            print(json.dumps({"moved_to": str(store.damage.moved_to)}))
            await store.close()
            print(json.dumps([r["request_id"] for r in read_records(Path(sys.argv[1]))]))

        asyncio.run(main())
    """)
    done = child(code, str(damaged / "records"))
    assert done.returncode == 0, done.stderr[-2000:]
    moved, ids = (json.loads(line) for line in done.stdout.splitlines()[-2:])
    assert ids == ["fresh"]
    kept = damaged_dirs(damaged)
    assert [str(p) for p in kept] == [moved["moved_to"]]
    assert (kept[0] / "data.mdb").exists()
    assert "record_store_damaged" in done.stdout + done.stderr


def test_read_records_on_damage_reads_nothing_and_keeps_the_files(damaged: Path) -> None:
    """read_records is what stats, explain and --warm auto read through."""
    code = "import sys; from pathlib import Path; from proxy.records.read import read_records; " \
        "print(len(list(read_records(Path(sys.argv[1])))))"  # fmt: skip
    done = child(code, str(damaged / "records"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1] == "0"
    assert len(damaged_dirs(damaged)) == 1


@pytest.mark.parametrize("command", [["stats"], ["stats", "--json"], ["explain", "--last-miss"]])
def test_stats_and_explain_survive_and_say_where_the_damage_went(
    damaged: Path, command: list[str]
) -> None:
    done = child(CLI, *command, "--data-dir", str(damaged))
    assert done.returncode in (0, 1), done.stderr[-2000:]  # explain: 1 = no miss found
    kept = damaged_dirs(damaged)
    assert len(kept) == 1 and (kept[0] / "data.mdb").exists()
    assert "damaged" in done.stderr and str(kept[0]) in done.stderr
    if command == ["stats", "--json"]:
        assert json.loads(done.stdout)["requests"] == 0  # stdout stays JSON
    again = child(CLI, *command, "--data-dir", str(damaged))
    assert again.returncode in (0, 1) and "damaged" not in again.stderr


def test_a_damaged_store_in_use_is_left_in_place_by_readers(tmp_path: Path) -> None:
    """stats must not pull a store from under a running kvproxy: it reports the damage and
    leaves the files where they are (the next serve start moves them)."""
    populate(tmp_path / "records", n=2000)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, lmdb; env = lmdb.open(sys.argv[1], max_dbs=4); "
         "print('open', flush=True); sys.stdin.read()", str(tmp_path / "records")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        truncate(tmp_path / "records")
        done = child(CLI, "stats", "--data-dir", str(tmp_path))
        assert done.returncode == 0, done.stderr[-2000:]
        assert "damaged" in done.stderr and "in use" in done.stderr
        assert damaged_dirs(tmp_path) == [] and (tmp_path / "records" / "data.mdb").exists()
    finally:
        holder.communicate("", timeout=30)
