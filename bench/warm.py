"""`make bench-warm`: the seeds' warm-up acceptance, measured in one run.

An agent's system prompt and tool definitions (~1,500 tokens; the seeds had ~2,000) and 10
identical requests after a fresh start of the embedded llama-server (bundled SmolLM2, 2
slots): direct, through kvproxy without warm-up, and through kvproxy with ``--warm`` on a
file holding that prefix, and with ``--warm`` on the whole first request (the seeds' case:
the requests are identical); then the upstream is restarted (same port, slots empty) and
one more request is sent on each side. TTFT (first streamed content)
of each request. Target: the first request after a start or a restart is a hit (its TTFT
within 2x of a warm request's).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.report import publish
from bench.workload import chat, document
from proxy.backends.embedded import EmbeddedServer
from proxy.config.settings import EmbeddedSettings
from proxy.testing.process import ProxyProcess, spawn_proxy

NAMES = ("read_file", "run", "search")
TOOLS = [{"type": "function", "function": {
    "name": name, "description": f"{name}: " + document(i, 40),
    "parameters": {"type": "object", "properties": {"arg": {"type": "string"}},
                   "required": ["arg"]}}} for i, name in enumerate(NAMES)]  # fmt: skip
SYSTEM = {"role": "system", "content": "You are Timmy, an agent.\n" + document(11, 1300)}
ASK = {"role": "user", "content": "What is the next task?"}
SETTINGS = EmbeddedSettings(parallel=2, ctx_per_slot=4096, extra_args=("--cache-ram", "0"))


def ask(client: httpx.Client, base: str) -> tuple[float, int]:
    """(TTFT ms, cached tokens) of one request."""
    _, timings, _, ttft = chat(client, base, [SYSTEM, ASK], 4, {"tools": TOOLS})
    return ttft, int(timings.get("cache_n", 0))


def wait_warmed(proxy: ProxyProcess, reason: str, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while sum(1 for ln in proxy.log_lines() if '"warmed"' in ln and reason in ln) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"kvproxy did not warm ({reason})")
        time.sleep(0.2)


def side(tmp: Path, mode: str, client: httpx.Client) -> dict[str, Any]:
    llama = EmbeddedServer.start(SETTINGS, tmp / f"{mode}-llama")
    proxy = None
    try:
        base = llama.url
        if mode != "direct":
            args = ["--upstream", llama.url]
            if mode in ("warm", "warm-request"):
                warm = tmp / f"{mode}.json"
                messages = [SYSTEM, ASK] if mode == "warm-request" else [SYSTEM]
                warm.write_text(json.dumps({"messages": messages, "tools": TOOLS}))
                args += ["--warm", str(warm)]
            proxy = spawn_proxy(tmp / f"{mode}-proxy", *args)
            base = proxy.url
            if mode != "kvproxy":
                wait_warmed(proxy, "start", 1)
        first10 = [ask(client, base) for _ in range(10)]
        port = llama.port
        llama.stop()
        llama = EmbeddedServer.start(SETTINGS, tmp / f"{mode}-llama", port)
        if proxy is not None and mode != "kvproxy":
            wait_warmed(proxy, "upstream lost its cache", 1)
        after = ask(client, base)
        return {"first10": first10, "after_restart": after}
    finally:
        if proxy is not None:
            proxy.stop()
        llama.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="kvp-warm-"))
    # no keep-alive: a pooled connection to the server before its restart would be dead
    with httpx.Client(timeout=600, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        runs = {mode: side(tmp, mode, client)
                for mode in ("direct", "kvproxy", "warm", "warm-request")}  # fmt: skip
    names = {"direct": "direct", "kvproxy": "kvproxy, no warm-up",
             "warm": "kvproxy --warm (system + tools)",
             "warm-request": "kvproxy --warm (the whole first request)"}  # fmt: skip
    rows = ["| side | request 1 | 2 | 3 | 4 | 5 | 6 | 7 | 8 | 9 | 10 | first after a restart "
            "| warm median (2-10) | first / warm |", "|---" * 14 + "|"]  # fmt: skip
    for mode, run in runs.items():
        ttfts = [t for t, _ in run["first10"]]
        warm_median = statistics.median(ttfts[1:])
        cells = [f"{t:.0f} ({c})" for t, c in run["first10"]]
        after_t, after_c = run["after_restart"]
        rows.append(f"| {names[mode]} | {' | '.join(cells)} | {after_t:.0f} ({after_c}) "
                    f"| {warm_median:.0f} | {ttfts[0] / warm_median:.1f}x / "
                    f"{after_t / warm_median:.1f}x |")  # fmt: skip
    table = "\n".join([*rows, "", "TTFT in ms (cached tokens). The prefix (system prompt + 3 "
                       "tools) is ~1,500 tokens; each request adds a short question (~15 "
                       "tokens), which the "
                       "first request after a warm-up still prefills."])  # fmt: skip
    publish("warm", table, not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
