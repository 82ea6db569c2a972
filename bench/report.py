"""Writing a benchmark's table into docs/benchmarks.md between its markers."""

from __future__ import annotations

import time
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def write_section(name: str, table: str, doc: Path = DOC, command: str | None = None) -> bool:
    """Replace what is between ``<!-- name:begin -->`` and ``<!-- name:end -->``."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if not doc.exists():
        return False
    text = doc.read_text()
    if begin not in text or end not in text:
        return False
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    by = command or f"make bench-{name}"
    doc.write_text(f"{head}{begin}\nMeasured {stamp} by `{by}`:\n\n{table}\n{end}{tail}")
    return True


def publish(name: str, table: str, write: bool = True) -> None:
    """Print a benchmark's table and, unless told not to, write it into its section."""
    print(table)
    if write:
        write_section(name, table)
