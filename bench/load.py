"""`make bench-load` and `make bench-soak`: many concurrent agent conversations on 2 slots.

Each run starts a fresh 2-slot llama-server (bundled SmolLM2) per side and plays N
concurrent conversations, each a loop of turns: a shared system prompt, its own opening
document, short follow-ups that append the model's reply. Half the conversations stream;
a quarter of all streamed turns hang up after the first token (as a client that is
interrupted does). Direct and through kvproxy, in one run. Per side it reports completed
requests, throughput, TTFT p50/p95/p99 (first content for streams, the whole answer
otherwise), errors beyond the deliberate hang-ups, the longest time a slot sat idle while
requests waited (the server's ``/slots`` polled every 50 ms), kvproxy's RSS before and
after, and records written against requests sent.

The soak (``--soak SECONDS``) keeps N conversations going through kvproxy and samples its
RSS and open file descriptors every 10 s into docs/bench-soak.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.report import publish
from bench.workload import document
from proxy.backends.embedded import EmbeddedServer
from proxy.config.settings import EmbeddedSettings
from proxy.records.read import read_records
from proxy.testing.process import ProxyProcess, spawn_proxy

SLOTS = 2
CTX = 4096
SYSTEM = (
    "You are an agent that works in a terminal. Tools: read_file(path), write_file(path, "
    "text), run(command), search(query). Plan, then act one tool at a time. "
) * 12
DOCS = Path(__file__).resolve().parent.parent / "docs"


@dataclass
class Result:
    ttft_ms: float
    ok: bool
    hung_up: bool = False
    error: str | None = None


@dataclass
class Side:
    results: list[Result] = field(default_factory=list)
    wall_s: float = 0.0
    idle_waiting_ms: float = 0.0
    rss_before_mb: float | None = None
    rss_after_mb: float | None = None
    records: int | None = None

    @property
    def completed(self) -> int:
        return sum(r.ok for r in self.results)

    @property
    def errors(self) -> list[str]:
        return [r.error or "?" for r in self.results if not r.ok and not r.hung_up]

    def ttft(self, q: float) -> float:
        values = sorted(r.ttft_ms for r in self.results if r.ok or r.hung_up)
        return values[min(len(values) - 1, int(q * len(values)))] if values else 0.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


async def turn(client: httpx.AsyncClient, base: str, messages: list[dict[str, Any]],
               stream: bool, hang_up: bool, max_tokens: int) -> tuple[Result, str]:  # fmt: skip
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": stream}
    t0 = time.perf_counter()
    text: list[str] = []
    try:
        if not stream:
            resp = await client.post(base + "/v1/chat/completions", json=body)
            ms = (time.perf_counter() - t0) * 1000
            if resp.status_code != 200:
                return Result(ms, False, error=f"{resp.status_code}"), ""
            return Result(ms, True), resp.json()["choices"][0]["message"]["content"] or ""
        ttft = None
        async with client.stream("POST", base + "/v1/chat/completions", json=body) as resp:
            if resp.status_code != 200:
                await resp.aread()
                ms = (time.perf_counter() - t0) * 1000
                return Result(ms, False, error=f"{resp.status_code}"), ""
            async for line in resp.aiter_lines():
                if not line.startswith("data:") or line.endswith("[DONE]"):
                    continue
                for choice in json.loads(line[5:]).get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        ttft = ttft if ttft is not None else (time.perf_counter() - t0) * 1000
                        text.append(piece)
                if hang_up and ttft is not None:
                    return Result(ttft, False, hung_up=True), "".join(text)
        ms = ttft if ttft is not None else (time.perf_counter() - t0) * 1000
        return Result(ms, True), "".join(text)
    except httpx.HTTPError as exc:
        return Result((time.perf_counter() - t0) * 1000, False, error=type(exc).__name__), ""


async def conversation(base: str, seed: int, turns: int | None, until: float | None,
                       out: list[Result], words: int, max_tokens: int,
                       inflight: list[int]) -> None:  # fmt: skip
    """One agent: its own loop of turns, streaming or not, sometimes hanging up."""
    rng = random.Random(seed)
    stream = seed % 2 == 0
    opening = document(seed, words) + "\n\nSummarize it."
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": opening}]
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=900, limits=limits) as client:
        n = 0
        while (turns is not None and n < turns) or (until is not None and time.time() < until):
            hang_up = stream and rng.random() < 0.5  # half the streamers: a quarter of all
            inflight[0] += 1
            try:
                result, reply = await turn(client, base, messages, stream, hang_up, max_tokens)
            finally:
                inflight[0] -= 1
            out.append(result)
            messages.append({"role": "assistant", "content": reply or "ok"})
            messages.append({"role": "user", "content": f"Turn {n}: name one more keyword."})
            if len(messages) > 12:  # stay well inside the slot's context
                messages = messages[:2] + messages[-6:]
            n += 1


async def watch_idle(server: str, inflight: list[int], stop: asyncio.Event,
                     results: list[Result]) -> float:  # fmt: skip
    """The longest stretch (ms) in which a slot was idle while requests were waiting,
    from the first answer on (a cold llama-server leaves its second slot idle for ~2 s
    while it starts the first request, direct or not)."""
    longest, since = 0.0, None
    async with httpx.AsyncClient(timeout=2) as client:
        while not stop.is_set():
            try:
                slots = (await client.get(server + "/slots")).json()
                busy = sum(1 for s in slots if s.get("is_processing"))
            except (httpx.HTTPError, ValueError, AttributeError):
                busy = SLOTS
            now = time.perf_counter()
            if results and busy < SLOTS and inflight[0] > busy:
                since = since if since is not None else now
                longest = max(longest, (now - since) * 1000)
            else:
                since = None
            await asyncio.sleep(0.05)
    return longest


async def drive(base: str, server: str, n: int, turns: int | None, until: float | None,
                words: int, max_tokens: int) -> tuple[list[Result], float, float]:  # fmt: skip
    results: list[Result] = []
    inflight = [0]  # requests sent and not yet answered
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch_idle(server, inflight, stop, results))
    t0 = time.perf_counter()
    await asyncio.gather(*(conversation(base, seed, turns, until, results, words, max_tokens,
                                        inflight) for seed in range(n)))  # fmt: skip
    wall = time.perf_counter() - t0
    stop.set()
    return results, wall, await watcher


def start_server(workdir: Path) -> EmbeddedServer:
    settings = EmbeddedSettings(parallel=SLOTS, ctx_per_slot=CTX)
    return EmbeddedServer.start(settings, workdir / "llama")


def warm_up(base: str) -> None:
    """One request first, on both sides: the baseline RSS is a warm kvproxy's."""
    body = {"messages": [{"role": "user", "content": "Warm up."}], "max_tokens": 2}
    httpx.post(base + "/v1/chat/completions", json=body, timeout=120).raise_for_status()


def run_side(through: bool, n: int, turns: int, words: int, max_tokens: int) -> Side:
    tmp = Path(tempfile.mkdtemp(prefix="kvp-load-"))
    llama = start_server(tmp)
    proxy: ProxyProcess | None = None
    side = Side()
    try:
        if through:
            proxy = spawn_proxy(tmp / "proxy", "--upstream", llama.url, "--log-level", "warning")
        base = proxy.url if proxy else llama.url
        warm_up(base)
        if proxy is not None:
            side.rss_before_mb = rss_mb(proxy.process.pid)
        side.results, side.wall_s, side.idle_waiting_ms = asyncio.run(
            drive(base, llama.url, n, turns, None, words, max_tokens)
        )
        if proxy is not None:
            time.sleep(2)
            side.rss_after_mb = rss_mb(proxy.process.pid)
    finally:
        if proxy is not None:
            proxy.stop()
            side.records = sum(1 for _ in read_records(proxy.data_dir / "records"))
        llama.stop()
    return side


def row(n: int, name: str, side: Side) -> str:
    rss = "–"
    if side.rss_before_mb is not None and side.rss_after_mb is not None:
        rss = f"{side.rss_before_mb:.0f} → {side.rss_after_mb:.0f}"
    records = "–"
    if side.records is not None:  # the warm-up request has its record too
        records = f"{side.records - 1} / {len(side.results)}"
    return (
        f"| {n} | {name} | {side.completed} / {len(side.results)} "
        f"| {side.completed / side.wall_s:.2f} "
        f"| {side.ttft(0.5):.0f} / {side.ttft(0.95):.0f} / {side.ttft(0.99):.0f} "
        f"| {len(side.errors)} | {side.idle_waiting_ms:.0f} | {rss} | {records} |"
    )


HEADER = (
    "| N | side | completed / requests | completed/s | TTFT p50 / p95 / p99 ms | errors "
    "| longest slot idle while requests waited, ms | kvproxy RSS MB before → after "
    "| records / requests |\n|---|---|---|---|---|---|---|---|---|"
)


def load(ns: list[int], turns: int, words: int, max_tokens: int, write: bool) -> None:
    rows = []
    for n in ns:
        for name, through in (("direct", False), ("kvproxy", True)):
            side = run_side(through, n, turns, words, max_tokens)
            rows.append(row(n, name, side))
            print(rows[-1], flush=True)
            if side.errors:
                print(f"    errors: {sorted(set(side.errors))}", flush=True)
    table = "\n".join([HEADER, *rows])
    publish("load", table, write)


def soak(seconds: float, n: int, words: int, max_tokens: int, write: bool) -> None:
    """kvproxy under N conversations for ``seconds``: RSS and fds sampled every 10 s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tmp = Path(tempfile.mkdtemp(prefix="kvp-soak-"))
    llama = start_server(tmp)
    proxy = spawn_proxy(tmp / "proxy", "--upstream", llama.url, "--log-level", "warning")
    samples: list[tuple[float, float, int]] = []
    pid = proxy.process.pid
    t0 = time.time()

    async def sample(stop: asyncio.Event) -> None:
        while not stop.is_set():
            samples.append((time.time() - t0, rss_mb(pid), open_fds(pid)))
            await asyncio.sleep(10)

    async def run() -> list[Result]:
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample(stop))
        results, _, _ = await drive(proxy.url, llama.url, n, None, t0 + seconds, words,
                                    max_tokens)  # fmt: skip
        stop.set()
        await sampler
        return results

    try:
        results = asyncio.run(run())
        time.sleep(2)
        samples.append((time.time() - t0, rss_mb(pid), open_fds(pid)))
    finally:
        proxy.stop()
        records = sum(1 for _ in read_records(proxy.data_dir / "records"))
        llama.stop()
    minutes = [s[0] / 60 for s in samples]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    ax1.plot(minutes, [s[1] for s in samples])
    ax1.set_ylabel("kvproxy RSS, MB")
    ax1.set_ylim(bottom=0)
    ax2.plot(minutes, [s[2] for s in samples], color="tab:orange")
    ax2.set_ylabel("open file descriptors")
    ax2.set_ylim(bottom=0)
    ax2.set_xlabel("minutes")
    fig.suptitle(f"make bench-soak: {n} conversations on {SLOTS} slots, {seconds / 60:.0f} min")
    fig.tight_layout()
    png = DOCS / "bench-soak.png" if write else tmp / "bench-soak.png"
    fig.savefig(png, dpi=80)
    rss = [s[1] for s in samples]
    fds = [s[2] for s in samples]
    first_rss = rss[min(6, len(rss) - 1)]  # after the first minute, once warm
    text = (
        f"{len(results)} requests ({sum(r.ok for r in results)} completed, "
        f"{sum(r.hung_up for r in results)} hung up by the client, "
        f"{sum(1 for r in results if not r.ok and not r.hung_up)} errors), {records} records. "
        f"RSS {rss[0]:.0f} MB at start, {first_rss:.0f} MB after a minute, max {max(rss):.0f}, "
        f"{rss[-1]:.0f} at the end; open fds {fds[0]} at start, max {max(fds)}, {fds[-1]} at "
        f"the end.\n\n![kvproxy RSS and fds over the soak](bench-soak.png)"
    )
    publish("soak", text, write)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", default="8,32,64", help="concurrent conversations, comma list")
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--words", type=int, default=120, help="opening document words")
    parser.add_argument("--max-tokens", type=int, default=12)
    parser.add_argument("--soak", type=float, default=0, help="soak seconds (N: first of --n)")
    parser.add_argument("--no-write", action="store_true", help="do not update the docs")
    args = parser.parse_args(argv)
    ns = [int(x) for x in args.n.split(",")]
    if args.soak:
        soak(args.soak, ns[0], args.words, args.max_tokens, not args.no_write)
    else:
        load(ns, args.turns, args.words, args.max_tokens, not args.no_write)


if __name__ == "__main__":
    main()
