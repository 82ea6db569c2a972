"""Reading a store read-only, as stats, explain and --warm auto do: a missing store reads as
empty, a record that is not JSON is passed over."""

from __future__ import annotations

from pathlib import Path

from proxy.records.read import read_counters, read_records
from tests.unit.records.test_damage import populate


def test_missing_database_reads_as_empty(tmp_path: Path) -> None:
    assert list(read_records(tmp_path / "nothing")) == []


def test_undecodable_records_are_skipped(tmp_path: Path) -> None:
    """A flipped byte inside a value is no structural damage, but it is not JSON either."""
    populate(tmp_path / "records", n=20)
    data = tmp_path / "records" / "data.mdb"
    raw = data.read_bytes()
    at = raw.index(b'"request_id":"r7"')
    data.write_bytes(raw[:at] + b"\xff" + raw[at + 1 :])
    ids = [r["request_id"] for r in read_records(tmp_path / "records")]
    assert "r7" not in ids and len(ids) == 19


def test_counters_of_a_missing_store_read_as_empty(tmp_path: Path) -> None:
    assert read_counters(tmp_path / "nothing") == {}
