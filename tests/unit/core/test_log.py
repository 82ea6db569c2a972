"""Logging: readable console lines on a terminal, JSON in the file always."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from proxy.core.log import configure, console_wanted, get_logger


@pytest.mark.parametrize(
    ("log_format", "tty", "console"),
    [("auto", True, True), ("auto", False, False), ("console", False, True),
     ("json", True, False)],
)  # fmt: skip
def test_console_when_asked_or_on_a_terminal(log_format: str, tty: bool, console: bool) -> None:
    assert console_wanted(log_format, tty) is console


@pytest.mark.parametrize("log_format", ["console", "json"])
def test_stderr_follows_the_format_and_the_file_stays_json(
    log_format: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    configure("info", tmp_path / "kvproxy.log", log_format)
    get_logger("kvproxy.test").info("slot_restored", slot=1, tokens=1500)
    line = capsys.readouterr().err.strip()
    record = json.loads((tmp_path / "kvproxy.log").read_text().strip())
    assert record["event"] == "slot_restored" and record["tokens"] == 1500
    if log_format == "json":
        assert json.loads(line) == record
    else:
        assert not line.startswith("{") and "slot_restored" in line and "tokens=1500" in line
    configure("info", None, "json")
