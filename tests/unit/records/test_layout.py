"""The on-disk layout is a format: stores written by earlier versions must read back, so
the record keys and database names never change."""

from __future__ import annotations

from proxy.records.layout import RECORDS, SCRUBBED, STATE_DBS, key_time, record_key


def test_record_keys_are_nanoseconds_then_sequence_big_endian() -> None:
    assert record_key(1_000_001.5, 4) == bytes.fromhex("00038d7efe2eaf0000000004")
    assert record_key(1.0, 2**32 + 7) == bytes.fromhex("000000003b9aca0000000007")
    assert key_time(record_key(1_000_001.5, 4)) == 1_000_001.5


def test_record_keys_sort_by_time_then_sequence() -> None:
    keys = [record_key(t, s) for t, s in [(2.0, 1), (1.0, 9), (1.0, 3), (1.5, 0)]]
    assert sorted(keys) == [keys[2], keys[1], keys[3], keys[0]]


def test_database_names() -> None:
    assert (RECORDS, STATE_DBS, SCRUBBED) == (
        b"records",
        (b"tapes", b"slots", b"meta", b"responses"),
        b"scrubbed:tapes",
    )
