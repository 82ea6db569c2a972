"""kvproxy's own time on an appended tool turn of a ~30k-token conversation, phase by phase,
and a cProfile of the same path (issue 20, point 6).

kvproxy runs in this process (``create_app``) in front of the embedded llama-server serving
Gemma 3 270M at 32k, as in ``make bench-tokens``; the client posts from a worker thread, so
that only kvproxy's side is timed and profiled. The tokenizer's thread hand-off is made
inline here so that the profile sees it. Run: ``python -m bench.own_time [--turns N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import functools
import io
import json
import pstats
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web

import proxy.web.handlers as handlers
from bench.tokens import conversation, tool_turn
from proxy.backends.embedded import EmbeddedServer, free_port, resolve_model
from proxy.backends.upstream import UpstreamSpec
from proxy.config.settings import EmbeddedSettings, Settings
from proxy.records.read import read_records
from proxy.web.app import create_app
from proxy.web.components import DIRECTOR

Timings = dict[str, list[float]]


def timed(spent: Timings, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` (sync or async) with its wall time added to ``spent[name]``."""
    if asyncio.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                spent[name].append((time.perf_counter() - t0) * 1000)

        return run_async

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[name].append((time.perf_counter() - t0) * 1000)

    return run


async def inline(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """``asyncio.to_thread`` without the thread, for the profile."""
    return fn(*args, **kwargs)


def instrument(app: web.Application, spent: Timings) -> None:
    director = app[DIRECTOR]
    handlers.read_json = timed(spent, "read + decode body", handlers.read_json)
    director.rewriter.plan = timed(spent, "rewrite plan", director.rewriter.plan)
    director.calls_for = timed(spent, "upstream body (calls_for)", director.calls_for)
    director.slots.tokens_for = timed(spent, "tokens (render + tokenize + hashes)",
                                      director.slots.tokens_for)  # fmt: skip
    director.route = timed(spent, "route", director.route)
    director.dispatch = timed(spent, "dispatch", director.dispatch)
    from proxy.dialects.openai_chat import DIALECT

    type(DIALECT).parse = timed(spent, "parse (canonical)", type(DIALECT).parse)


def post(client: httpx.Client, url: str, body: dict[str, Any]) -> None:
    """Send, and leave after a second: kvproxy's own time ends when it dispatches, and the
    server (small batches) stops prefilling once kvproxy drops the call."""
    raw = json.dumps(body).encode()
    with contextlib.suppress(httpx.TimeoutException):
        client.post(url + "/v1/chat/completions", content=raw, timeout=1.0,
                    headers={"content-type": "application/json"})  # fmt: skip


async def run(server: EmbeddedServer, tmp: Path, size: int, turns: int, profile: Path) -> None:
    settings = Settings(upstreams=(UpstreamSpec(url=server.url, kind="llama"),), data_dir=tmp)
    app = create_app(settings)
    runner = web.AppRunner(app, handler_cancellation=True)  # a dropped call stops
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}"
    asyncio.to_thread = inline  # type: ignore[assignment]
    spent: Timings = defaultdict(list)
    profiler = cProfile.Profile()
    try:
        with httpx.Client(timeout=1800, limits=httpx.Limits(max_keepalive_connections=0)) as c:

            def count(body: dict[str, Any]) -> int:
                text = c.post(server.url + "/apply-template", json=body).json()["prompt"]
                return len(c.post(server.url + "/tokenize", json={"content": text}).json()[
                    "tokens"])  # fmt: skip

            loop = asyncio.get_running_loop()
            body = await loop.run_in_executor(None, conversation, size, count, 7)
            body = {**body, "max_tokens": 1, "temperature": 0}
            await loop.run_in_executor(None, post, c, url, body)  # caches filled
            instrument(app, spent)
            for i in range(turns):
                body = {**body, "messages": [*body["messages"], *tool_turn(10_000 + i, 60)[:3]]}
                await asyncio.sleep(0.5)  # the dropped call is over
                if i % 2:
                    profiler.enable()
                await loop.run_in_executor(None, post, c, url, body)
                profiler.disable()
            messages = len(body["messages"])
    finally:
        await runner.cleanup()
    own = [r["overhead_ms"] for r in read_records(settings.records_dir) if r.get("overhead_ms")]
    plain = own[1:][0::2]  # the unprofiled turns (even i), after the first
    print(f"{messages} messages; own time (overhead_ms) unprofiled turns: "
          f"p50 {statistics.median(plain):.2f} ms of {plain}")  # fmt: skip
    print("| phase | p50 ms |\n|---|---|")
    for name, values in spent.items():
        print(f"| {name} | {statistics.median(values[0::2]):.2f} |")
    profiler.dump_stats(profile)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs().sort_stats("tottime")
    stats.print_stats(30)
    stats.sort_stats("cumulative").print_stats(45)
    print(out.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=30_000)
    parser.add_argument("--turns", type=int, default=12)
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--profile", type=Path, default=Path("own_time.prof"))
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="kvp-own-"))
    model, template = resolve_model(args.model)
    small_batches = ("--batch-size", "64", "--ubatch-size", "64")
    extra = ("--chat-template-file", str(template), *small_batches) if template else ()
    settings = EmbeddedSettings(model=model, parallel=1, ctx_per_slot=32_768, extra_args=extra)
    server = EmbeddedServer.start(settings, tmp / "llama")
    try:
        asyncio.run(run(server, tmp / "proxy", args.tokens, args.turns, args.profile))
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
