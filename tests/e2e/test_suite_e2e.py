"""The scenario suite's driver on a 2-scenario subset: the table's shape and the files it
writes (no timing thresholds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import suite

pytestmark = pytest.mark.e2e


def test_suite_subset_writes_table_and_chart(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n<!-- suite:begin -->\n<!-- suite:end -->\n")
    code = suite.main(
        ["--scenarios", "1,9", "--words", "250", "--out", str(tmp_path), "--doc", str(doc)]
    )
    assert code == 0
    text = doc.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| # | scenario | calls |")
    assert [r.split("|")[1].strip() for r in rows[1:]] == ["1", "9"]
    nine = rows[2].split("|")
    assert nine[3].strip() == "4"  # calls
    assert nine[12].strip().split() == ["HIT"] * 4  # kvproxy keeps every call a hit
    assert "![per-call TTFT](bench-suite.png)" in text
    png = tmp_path / "bench-suite.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| 9 | timestamp in the system message |" in capsys.readouterr().out
