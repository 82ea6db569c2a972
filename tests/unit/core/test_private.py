"""The data directory is private: 0700 directories and 0600 files, tightened at start."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from proxy.core.private import DIR_MODE, FILE_MODE, secure_data_dir


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_a_new_directory_is_created_private(tmp_path: Path) -> None:
    data = tmp_path / "a" / "data"
    assert secure_data_dir(data) == []
    assert mode(data) == DIR_MODE


def test_wider_modes_are_tightened_and_named(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "records").mkdir(parents=True)
    (data / "records" / "data.mdb").write_bytes(b"x")
    (data / "tight").write_bytes(b"x")
    os.chmod(data, 0o755)
    os.chmod(data / "records", 0o777)
    os.chmod(data / "records" / "data.mdb", 0o644)
    os.chmod(data / "tight", 0o600)
    tightened = secure_data_dir(data)
    assert tightened == sorted([str(data), str(data / "records"),
                                str(data / "records" / "data.mdb")])  # fmt: skip
    assert (mode(data), mode(data / "records")) == (DIR_MODE, DIR_MODE)
    assert mode(data / "records" / "data.mdb") == FILE_MODE
    assert secure_data_dir(data) == []  # nothing left to tighten


def test_modes_are_only_narrowed_never_widened(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / "read-only").write_bytes(b"x")
    os.chmod(data / "read-only", 0o400)
    secure_data_dir(data)
    assert mode(data / "read-only") == 0o400


def test_a_link_is_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_bytes(b"x")
    os.chmod(outside, 0o644)
    data = tmp_path / "data"
    data.mkdir()
    (data / "link").symlink_to(outside)
    secure_data_dir(data)
    assert mode(outside) == 0o644
