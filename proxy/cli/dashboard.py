"""`kvproxy tail`: a live terminal dashboard fed by following kvproxy's log file.

The state (``Dashboard``) is built from ``request_done`` events only, so it works on a file
written by another process; ``LogFollower`` reopens the file when it is rotated or
truncated. ``render`` draws one frame with rich; ``--once`` prints a single frame.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from proxy.records.stats import Totals

SPARK = "▁▂▃▄▅▆▇█"
RECENT = 15


def events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if '"request_done"' not in line:
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") == "request_done":
            yield event


def sparkline(values: list[float]) -> str:
    if not values:
        return ""
    top = max(values) or 1.0
    return "".join(SPARK[min(len(SPARK) - 1, int(v / top * (len(SPARK) - 1)))] for v in values)


def is_hit(event: dict[str, Any]) -> bool:
    return not event.get("miss_cause") and (event.get("cached_tokens") or 0) > 0


@dataclass
class Dashboard:
    recent: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RECENT))
    ttfts: deque[float] = field(default_factory=lambda: deque(maxlen=60))
    times: deque[float] = field(default_factory=lambda: deque(maxlen=1000))
    slots: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: int = 0
    prompt: int = 0
    cached: int = 0
    prefilled: int = 0
    prefill_ms: float = 0.0
    # the ceiling and the prefill lost under it, in all and per client (stats.Totals)
    totals: Totals = field(default_factory=Totals)
    clients: dict[str, Totals] = field(default_factory=lambda: defaultdict(Totals))

    def add(self, event: dict[str, Any]) -> None:
        if event.get("status") in (None, 200):
            self.totals.add_ceiling(event, event.get("miss_cause"))
            client = self.clients[str(event.get("client") or "-")]
            client.add(event)
        self.requests += 1
        self.recent.append(event)
        self.times.append(event.get("time") or time.time())
        self.prompt += event.get("prompt_tokens") or 0
        self.cached += event.get("cached_tokens") or 0
        self.prefilled += event.get("prefilled_tokens") or 0
        self.prefill_ms += event.get("prefill_ms") or 0.0
        if event.get("ttft_ms") is not None:
            self.ttfts.append(event["ttft_ms"])
        if event.get("slot"):
            self.slots[event["slot"]] = event

    def rate(self, now: float, window: float = 60.0) -> float:
        return sum(1 for t in self.times if now - t <= window) / window

    @property
    def seconds_saved(self) -> float:
        if not self.prefilled:
            return 0.0
        return self.cached * (self.prefill_ms / self.prefilled) / 1000


def render(board: Dashboard, now: float | None = None) -> Group:
    now = time.time() if now is None else now
    hit_rate = board.cached / board.prompt if board.prompt else 0.0
    summary = Text.assemble(
        ("requests ", "bold"), f"{board.requests}  ",
        ("req/s (60 s) ", "bold"), f"{board.rate(now):.2f}  ",
        ("hit rate by tokens ", "bold"), f"{hit_rate:.1%}  ",
        ("tokens saved ", "bold"), f"{board.cached}  ",
        ("prefill saved ", "bold"), f"~{board.seconds_saved:.1f} s  ",
        ("of the ceiling ", "bold"), f"{board.totals.ceiling_share:.1%}  ",
        ("prefill lost ", "bold"), f"{sum(board.totals.lost_ms.values()) / 1000:.1f} s\n",
        ("TTFT ", "bold"), sparkline(list(board.ttfts)),
    )  # fmt: skip
    slots = Table(title="slots", expand=True)
    for column in ("slot", "lineage", "last request", "prompt", "cached", "age s"):
        slots.add_column(column)
    for slot, event in sorted(board.slots.items()):
        slots.add_row(
            slot, event.get("lineage") or "-", event.get("request_id") or "-",
            str(event.get("prompt_tokens") or "-"), str(event.get("cached_tokens") or 0),
            f"{now - (event.get('time') or now):.0f}",
        )  # fmt: skip
    clients = Table(title="clients", expand=True)
    for column in ("client", "requests", "hit rate", "of ceiling", "lost s", "lost to"):
        clients.add_column(column)
    for name, t in sorted(board.clients.items()):
        worst = max(t.lost_ms.items(), key=lambda kv: kv[1], default=("", 0.0))[0]
        clients.add_row(name, str(t.requests), f"{t.hit_rate:.1%}", f"{t.ceiling_share:.1%}",
                        f"{sum(t.lost_ms.values()) / 1000:.1f}", worst)  # fmt: skip
    recent = Table(title=f"last {RECENT} requests", expand=True)
    for column in ("id", "dialect", "slot", "prompt", "cached", "", "cause", "rewrite", "TTFT ms"):
        recent.add_column(column)
    for event in reversed(board.recent):
        hit = is_hit(event)
        recent.add_row(
            (event.get("request_id") or "")[:8], event.get("dialect") or "-",
            event.get("slot") or "-", str(event.get("prompt_tokens") or "-"),
            str(event.get("cached_tokens") or 0),
            Text("HIT", style="green") if hit else Text("MISS", style="red"),
            event.get("miss_cause") or "", ",".join(event.get("rewrite") or []),
            f"{event['ttft_ms']:.0f}" if event.get("ttft_ms") is not None else "-",
        )  # fmt: skip
    return Group(Panel(summary, title="kvproxy"), slots, clients, recent)


class LogFollower:
    """Lines appended to a file, across rotation (a new inode) and truncation."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: Any = None
        self._inode: int | None = None

    def _open(self) -> bool:
        try:
            self._file = open(self.path, encoding="utf-8", errors="replace")  # noqa: SIM115
        except FileNotFoundError:
            return False
        self._inode = os.fstat(self._file.fileno()).st_ino
        return True

    def read(self) -> list[str]:
        if self._file is None and not self._open():
            return []
        lines = self._file.readlines()
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return lines
        if stat.st_ino != self._inode or stat.st_size < self._file.tell():
            self._file.close()
            if self._open():
                lines += self._file.readlines()
        return lines

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def tail(path: Path, once: bool, interval: float = 1.0) -> int:
    from rich.console import Console
    from rich.live import Live

    board = Dashboard()
    follower = LogFollower(path)
    console = Console()
    try:
        for event in events(iter(follower.read())):
            board.add(event)
        if once:
            console.print(render(board))
            return 0
        with Live(render(board), console=console, refresh_per_second=4) as live:
            while True:
                time.sleep(interval)
                for event in events(iter(follower.read())):
                    board.add(event)
                live.update(render(board))
    except KeyboardInterrupt:
        return 0
    finally:
        follower.close()
