"""`make bench-overhead`: the latency kvproxy adds, direct vs through the proxy, in one run.

Against the embedded llama-server (bundled SmolLM2): GET /health over >= 2000 requests, a
non-streaming 8-token chat completion, and the time to the first streamed byte. Direct and
proxied requests alternate so that machine noise hits both alike. Prints a markdown table
and writes it into docs/benchmarks.md between the overhead markers.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from proxy.backends.embedded import EmbeddedServer
from proxy.config.settings import EmbeddedSettings
from proxy.testing.process import spawn_proxy


def post(client: httpx.Client, url: str) -> float:
    return timed(lambda: client.post(url + "/v1/chat/completions", json=CHAT))


CHAT = {
    "messages": [{"role": "user", "content": "Name a colour."}],
    "max_tokens": 8,
    "temperature": 0,
}
DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
BEGIN, END = "<!-- overhead:begin -->", "<!-- overhead:end -->"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def alternate(
    n: int, direct: Callable[[], float], proxied: Callable[[], float]
) -> tuple[list[float], list[float]]:
    d, p = [], []
    for _ in range(n):
        d.append(direct())
        p.append(proxied())
    return d, p


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def ttfb(client: httpx.Client, url: str) -> float:
    t0 = time.perf_counter()
    with client.stream("POST", url, json={**CHAT, "stream": True}) as resp:
        chunks = resp.iter_raw()
        next(chunks)
        first = (time.perf_counter() - t0) * 1000
        for _ in chunks:
            pass
    return first


def row(name: str, n: int, d: list[float], p: list[float]) -> str:
    d50, p50 = statistics.median(d), statistics.median(p)
    d99, p99 = pct(d, 0.99), pct(p, 0.99)
    return (
        f"| {name} | {n} | {d50:.3f} | {p50:.3f} | {p50 - d50:+.3f} | {d99:.3f} | {p99:.3f} "
        f"| {p99 - d99:+.3f} |"
    )


def run(health_n: int, chat_n: int) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedServer.start(EmbeddedSettings(parallel=4), Path(tmp) / "llama")
        proxy = spawn_proxy(Path(tmp) / "proxy", "--upstream", server.url, "--log-level", "warning")
        try:
            with httpx.Client(timeout=60) as client:
                for base in (server.url, proxy.url):  # warm both paths and the prompt cache
                    for _ in range(20):
                        client.get(base + "/health")
                    client.post(base + "/v1/chat/completions", json=CHAT)
                rows = [
                    row("GET /health", health_n, *alternate(
                        health_n,
                        lambda: timed(lambda: client.get(server.url + "/health")),
                        lambda: timed(lambda: client.get(proxy.url + "/health")),
                    )),
                    row("chat completion, 8 tokens, non-streaming", chat_n, *alternate(
                        chat_n,
                        lambda: post(client, server.url),
                        lambda: post(client, proxy.url),
                    )),
                    row("time to first streamed byte", chat_n, *alternate(
                        chat_n,
                        lambda: ttfb(client, server.url + "/v1/chat/completions"),
                        lambda: ttfb(client, proxy.url + "/v1/chat/completions"),
                    )),
                ]  # fmt: skip
        finally:
            proxy.stop()
            server.stop()
    header = (
        "| measure | n | direct p50 ms | kvproxy p50 ms | added p50 ms | direct p99 ms "
        "| kvproxy p99 ms | added p99 ms |\n|---|---|---|---|---|---|---|---|"
    )
    return "\n".join([header, *rows])


def write_doc(table: str) -> None:
    text = DOC.read_text() if DOC.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    body = f"{BEGIN}\nMeasured {stamp} by `make bench-overhead`:\n\n{table}\n{END}"
    DOC.write_text(head + body + tail)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--health", type=int, default=2000)
    parser.add_argument("--chat", type=int, default=50)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    table = run(args.health, args.chat)
    print(table)
    if not args.no_write:
        write_doc(table)
        print(f"\nwritten to {DOC}")


if __name__ == "__main__":
    main()
