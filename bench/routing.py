"""`make bench-routing`: interleaved conversations on few slots, direct versus kvproxy.

Every run starts a fresh llama-server (bundled SmolLM2) for each side and plays the same
conversations (bench.workload) turn by turn, interleaved. Per run it prints tokens
prefilled (sum of the server's ``prompt_n``), hit rate by tokens (``cache_n`` / prompt),
TTFT p50/p95, the direct/kvproxy prefill ratio, and the ideal (only what is new in each
call). Runs: N conversations on S slots with the server's host-RAM prompt cache on (its
default) and off (``--cache-ram 0``), and the upstream restarted mid-session. The table
goes into docs/benchmarks.md between the routing markers.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.report import publish
from bench.workload import Call, Conversation, ideal_prefill, play
from proxy.backends.embedded import EmbeddedServer
from proxy.config.settings import EmbeddedSettings
from proxy.testing.process import spawn_proxy

CTX = 4096


@dataclass
class Side:
    calls: list[Call]
    after_restart: list[Call]

    @property
    def prefilled(self) -> int:
        return sum(c.prompt_n for c in self.calls)

    @property
    def hit_rate(self) -> float:
        prompt = sum(c.prompt_tokens for c in self.calls)
        return sum(c.cache_n for c in self.calls) / prompt if prompt else 0.0

    def ttft(self, q: float) -> float:
        values = sorted(c.ttft_ms for c in self.calls)
        return values[min(len(values) - 1, int(q * len(values)))]


def server(slots: int, cache_ram: bool, data_dir: Path, port: int | None = None) -> EmbeddedServer:
    extra = () if cache_ram else ("--cache-ram", "0")
    settings = EmbeddedSettings(parallel=slots, ctx_per_slot=CTX, extra_args=extra)
    return EmbeddedServer.start(settings, data_dir, port)


def run_side(
    through_proxy: bool,
    conversations: int,
    slots: int,
    cache_ram: bool,
    turns: int,
    words: int,
    restart: bool,
) -> Side:
    tmp = Path(tempfile.mkdtemp(prefix="kvp-bench-"))
    llama = server(slots, cache_ram, tmp / "llama")
    told = ("--upstream-cache-ram", "8192" if cache_ram else "0")
    # the server's save directory is on this host: kvproxy takes idle checkpoints (without
    # it, only saves before an eviction, and a conversation that keeps its slot is lost)
    where = ("--slot-dir", str(tmp / "llama" / "slots")) if restart else ()
    proxy = (spawn_proxy(tmp / "proxy", "--upstream", llama.url, *told, *where)
             if through_proxy else None)  # fmt: skip
    base = proxy.url if proxy else llama.url
    convs = [Conversation.start(seed, words) for seed in range(conversations)]
    try:
        calls = play(base, convs, turns)
        after: list[Call] = []
        if restart:
            time.sleep(3)
            if proxy:
                checkpointed(tmp / "llama" / "slots")
            port = llama.port
            llama.stop()
            llama = server(slots, cache_ram, tmp / "llama", port)
            after = play(base, convs, 1, first_turn=turns)
            calls += after
        return Side(calls, after)
    finally:
        if proxy:
            proxy.stop()
        llama.stop()


def checkpointed(slot_dir: Path, quiet: float = 5.0, timeout: float = 60.0) -> None:
    """Wait until kvproxy's idle checkpoints (``--slot-checkpoint-idle``, 2 s) are written:
    no new slot file for ``quiet`` seconds. A fixed 3-second sleep raced them on a loaded
    machine, and the restart row then measured lost files instead of routing."""
    deadline = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        files = sorted((f.name, f.stat().st_mtime) for f in slot_dir.glob("*.bin"))
        if files != last:
            last, since = files, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.5)


def pct_row(name: str, direct: Side, via: Side) -> str:
    ideal = ideal_prefill(via.calls)
    return (
        f"| {name} | {direct.prefilled} | {via.prefilled} | {ideal} "
        f"| {direct.prefilled / max(1, via.prefilled):.2f}x "
        f"| {via.prefilled / max(1, ideal):.3f} "
        f"| {direct.hit_rate:.1%} | {via.hit_rate:.1%} "
        f"| {direct.ttft(0.5):.0f} / {direct.ttft(0.95):.0f} "
        f"| {via.ttft(0.5):.0f} / {via.ttft(0.95):.0f} |"
    )


HEADER = (
    "| run | direct prefilled | kvproxy prefilled | ideal | direct/kvproxy "
    "| kvproxy/ideal | direct hit | kvproxy hit | direct TTFT p50/p95 ms "
    "| kvproxy TTFT p50/p95 ms |\n|---|---|---|---|---|---|---|---|---|---|"
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--words", type=int, default=1000, help="opening document words")
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="do not update the docs")
    parser.add_argument("--only", help="rows by number, e.g. 5 (1-5; implies --no-write)")
    args = parser.parse_args(argv)
    runs: list[tuple[str, int, int, bool, bool]] = [
        ("8 on 4, host-RAM cache on", 8, 4, True, False),
        ("4 on 2, host-RAM cache on", 4, 2, True, False),
        ("8 on 4, --cache-ram 0", 8, 4, False, False),
        ("4 on 2, --cache-ram 0", 4, 2, False, False),
        ("4 on 2, --cache-ram 0, upstream restarted (--slot-dir)", 4, 2, False, True),
    ]
    if args.only:
        runs = [runs[int(i) - 1] for i in args.only.split(",")]
        args.no_write = True
    rows, restart_line = [], ""
    for name, n, s, cache_ram, restart in runs:
        direct, via = (
            run_side(proxied, n, s, cache_ram, args.turns, args.words, restart)
            for proxied in (False, True)
        )
        rows.append(pct_row(name, direct, via))
        print(rows[-1], flush=True)
        if restart:
            d = statistics.mean(c.ttft_ms for c in direct.after_restart)
            v = statistics.mean(c.ttft_ms for c in via.after_restart)
            dp = sum(c.prompt_n for c in direct.after_restart)
            vp = sum(c.prompt_n for c in via.after_restart)
            restart_line = (
                f"First turn of each conversation after the restart: TTFT mean direct "
                f"{d:.0f} ms, kvproxy {v:.0f} ms (**{d / v:.1f}x faster**); tokens prefilled "
                f"direct {dp}, kvproxy {vp}."
            )
            print(restart_line, flush=True)
    table = "\n".join([HEADER, *rows]) + "\n\n" + restart_line
    publish("routing", table, not args.no_write)


if __name__ == "__main__":
    main()
