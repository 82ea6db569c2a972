"""kvproxy's own time on an appended tool turn of a ~31k-token conversation, phase by phase,
and a cProfile of the same path (issue 20, point 6).

kvproxy runs in this process (``create_app``) in front of the embedded llama-server serving
Gemma 3 270M with two slots, as in ``make bench-tokens``: streamed appended tool turns (a
user ask, a tool call, its result) of one conversation, each completed (one token), so that
the slot holds the conversation and the turn is routed as bench-tokens' are. The client
posts from a worker thread. The first ``--turns`` turns are timed phase by phase (each phase
is a wrapper around the function named, added after start-up: nested phases are indented,
and a wrapper costs about a microsecond), with their page faults (fresh memory mapped on
first touch); then ``--profiled`` turns run under cProfile with
the tokenizer's thread hand-off made inline, so that the profile sees it.

The record's ``overhead_ms`` is kvproxy's time from the request's first byte to its
dispatch less its queue waits; ``queued_ms`` (``SlotManager.acquire_prompts`` as a whole:
the ``/slots`` check before routing and the routing itself) is one of those waits.
Run: ``python -m bench.own_time [--turns N] [--profiled M]``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import io
import pstats
import resource
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web

import proxy.flow.director as director_module
import proxy.slots.manager as manager_module
import proxy.tokens.local as local_module
import proxy.web.body as body_module
import proxy.web.handlers as handlers_module
from bench.tokens import appended, conversation
from bench.workload import chat
from proxy.backends import llama_server
from proxy.backends.embedded import EmbeddedServer, free_port, resolve_model
from proxy.backends.upstream import UpstreamSpec
from proxy.cli.main import tune_collector
from proxy.config.settings import EmbeddedSettings, Settings
from proxy.core import prefix_index
from proxy.dialects import openai_chat
from proxy.records.read import read_records
from proxy.slots import table as table_module
from proxy.web.app import create_app
from proxy.web.components import DIRECTOR


class Timings:
    """Milliseconds per phase per turn, summed over the phase's calls, counted from the
    turn's post until its dispatch (not the reply's tokenizing, say): wall time, and the
    CPU time of the thread that ran it (``time.thread_time``: what a busy machine's
    preemptions do not inflate)."""

    def __init__(self) -> None:
        self.turn: int | None = None
        self.spent: dict[str, dict[int, float]] = defaultdict(lambda: defaultdict(float))
        self.cpu: dict[str, dict[int, float]] = defaultdict(lambda: defaultdict(float))
        self.faults: dict[str, dict[int, float]] = defaultdict(lambda: defaultdict(float))

    def add(self, name: str, ms: float, cpu_ms: float, faults: int = 0) -> None:
        if self.turn is not None:
            self.spent[name][self.turn] += ms
            self.cpu[name][self.turn] += cpu_ms
            self.faults[name][self.turn] += faults

    def end_turn(self) -> None:
        self.turn = None


# (label, depth) in the order the request meets them.
ORDER: list[tuple[str, int]] = []


def timed(spent: Timings, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` (sync or async) with its wall time added to ``spent[name]``."""
    if asyncio.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            t0, c0, f0 = time.perf_counter(), time.thread_time(), minor_faults()
            try:
                return await fn(*args, **kwargs)
            finally:
                spent.add(name, (time.perf_counter() - t0) * 1000,
                          (time.thread_time() - c0) * 1000, minor_faults() - f0)  # fmt: skip

        return run_async

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        t0, c0, f0 = time.perf_counter(), time.thread_time(), minor_faults()
        try:
            return fn(*args, **kwargs)
        finally:
            spent.add(name, (time.perf_counter() - t0) * 1000, (time.thread_time() - c0) * 1000,
                      minor_faults() - f0)  # fmt: skip

    return run


def minor_faults() -> int:
    """The calling thread's minor page faults so far: memory the kernel maps on first touch
    (fresh pages of a large allocation), which the phases' wall time includes."""
    return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt


async def inline(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """``asyncio.to_thread`` without the thread, for the profile."""
    return fn(*args, **kwargs)


def instrument(app: web.Application, spent: Timings) -> Callable[[], None]:
    """Wrap the phases of the request path; returns what undoes it."""
    director = app[DIRECTOR]
    slots = director.slots
    tokenizer = slots.servers[0].tokenizer
    undo: list[tuple[Any, str, Any]] = []

    def wrap(label: str, depth: int, owner: Any, attr: str) -> None:
        original = getattr(owner, attr)
        undo.append((owner, attr, original))
        setattr(owner, attr, timed(spent, label, original))
        ORDER.append((label, depth))

    ORDER.clear()
    # (label, depth in the report, owner, attribute): the phases timed, in order
    phases = (
        ("look_ahead at admission (starts the /slots read)", 0, slots, "look_ahead"),
        ("read_json", 0, handlers_module, "read_json"),
        ("body read", 1, body_module, "read_body"),
        ("JSON decode", 1, body_module, "decode_json"),
        ("director.plan", 0, director, "plan"),
        ("dialect parse", 1, type(openai_chat.DIALECT), "parse"),
        ("identify", 1, director_module, "identify"),
        ("rewriter.plan", 1, director.rewriter, "plan"),
        ("cannot_fit", 1, director_module, "cannot_fit"),
        ("calls_for (upstream body)", 1, director, "calls_for"),
        ("heads_for (an appended turn known in part)", 1, slots, "heads_for"),
        ("appended_head", 2, tokenizer, "appended_head"),
        ("split_known", 3, tokenizer.pieces, "split_known"),
        ("tokens_for", 1, slots, "tokens_for"),
        ("prompt_tokens (with thread hand-off)", 2, tokenizer, "prompt_tokens"),
        ("features", 3, local_module, "features"),
        ("tokens_of_chat (in the thread)", 3, tokenizer, "tokens_of_chat"),
        ("render (resumed)", 4, tokenizer, "render"),
        ("tokenize (encode)", 4, tokenizer.pieces, "encode"),
        ("known prefix (text compare)", 5, tokenizer.pieces, "_known_prefix"),
        ("llama_tokenize (the new chunks)", 5, tokenizer.pieces, "_call"),
        ("remember (for the next turn)", 5, tokenizer.pieces, "_remember"),
        ("Prompt.of (hashes)", 2, None, ""),  # timed_prompt
        ("client_label", 1, director_module, "client_label"),
        ("best_predicted (original)", 1, slots, "best_predicted"),
        ("director.route", 0, director, "route"),
        ("acquire_prompts (queued_ms)", 1, slots, "acquire_prompts"),
        ("replies known", 2, slots, "_replies_known"),
        ("/slots sync", 2, slots, "_sync_before_routing"),
        ("_route", 2, slots, "_route"),
        ("views", 3, table_module.SlotTable, "views"),
        ("choose", 3, manager_module, "choose"),
        ("known_best", 3, manager_module, "known_best"),
        ("note_route", 1, director_module, "note_route"),
        ("ceiling.reached", 1, director.ceiling, "reached"),
        ("enter_gate", 0, director, "enter_gate"),
        ("dispatch", 0, director, "dispatch"),
    )
    for label, depth, owner, attr in phases:
        if owner is None:
            ORDER.append((label, depth))
        else:
            wrap(label, depth, owner, attr)
    wrap("backend prepare", 1, llama_server.LlamaServer, "prepare")
    dispatch, admit = director.dispatch, director.admit
    started: list[float] = [0.0, 0.0, 0]

    def admitted(*args: Any, **kwargs: Any) -> Any:
        started[:] = [time.perf_counter(), time.thread_time(), minor_faults()]
        return admit(*args, **kwargs)

    def dispatched(ex: Any) -> Any:
        try:
            return dispatch(ex)
        finally:
            spent.add("admit to dispatch (the event loop's thread)",
                      (time.perf_counter() - started[0]) * 1000,
                      (time.thread_time() - started[1]) * 1000,
                      minor_faults() - started[2])  # fmt: skip
            spent.end_turn()

    director.admit = admitted  # type: ignore[method-assign]
    director.dispatch = dispatched  # type: ignore[method-assign]
    ORDER.insert(0, ("admit to dispatch (the event loop's thread)", 0))

    def restore() -> None:
        for owner, attr, original in reversed(undo):
            setattr(owner, attr, original)

    return restore


def timed_prompt(spent: Timings) -> type:
    """``Prompt`` with its ``of`` timed, for the manager's ``Prompt.of``."""
    base = prefix_index.Prompt

    class Timed(base):  # type: ignore[misc,valid-type]
        of = classmethod(lambda cls, *a, **k: timed(spent, "Prompt.of (hashes)", base.of)(*a, **k))

    return Timed


async def run(server_url: str, tmp: Path, size: int, turns: int, profiled: int,
              profile: Path, pause: float, skip: int = 0,
              alternate: bool = False) -> None:  # fmt: skip
    settings = Settings(upstreams=(UpstreamSpec(url=server_url, kind="llama"),), data_dir=tmp)
    app = create_app(settings)
    runner = web.AppRunner(app)
    await runner.setup()
    tune_collector()  # as ``kvproxy serve`` does
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}"
    spent = Timings()
    profiler = cProfile.Profile()
    to_thread = asyncio.to_thread
    loop = asyncio.get_running_loop()
    try:
        with httpx.Client(timeout=1800, limits=httpx.Limits(max_keepalive_connections=0)) as c:

            def count(body: dict[str, Any]) -> int:
                text = c.post(server_url + "/apply-template", json=body).json()["prompt"]
                return len(c.post(server_url + "/tokenize", json={"content": text}).json()[
                    "tokens"])  # fmt: skip

            def send(body: dict[str, Any]) -> None:
                chat(c, url, body["messages"], 1, body)

            body = await loop.run_in_executor(None, conversation, size, count, 7)
            other: dict[str, Any] | None = None
            if alternate:  # bench-tokens' direct side: its own conversation on the other slot
                other = await loop.run_in_executor(None, conversation, size, count, 8)
                await loop.run_in_executor(None, chat, c, server_url, other["messages"], 1, other)
            for i in range(skip):  # what an earlier run against --upstream left in a slot
                body = appended(body, i)
            await loop.run_in_executor(None, send, body)  # the slot holds the conversation
            manager_module.Prompt = timed_prompt(spent)  # type: ignore[misc]
            restore = instrument(app, spent)
            for i in range(turns):
                body = appended(body, skip + i)
                await asyncio.sleep(pause)  # bench-tokens: a direct turn comes between
                if other is not None:
                    other = appended(other, skip + i)
                    await loop.run_in_executor(None, chat, c, server_url, other["messages"], 1,
                                               other)  # fmt: skip
                spent.turn = i
                await loop.run_in_executor(None, send, body)
            restore()
            manager_module.Prompt = prefix_index.Prompt  # type: ignore[misc]
            asyncio.to_thread = inline  # type: ignore[assignment]
            for i in range(turns, turns + profiled):
                body = appended(body, skip + i)
                await asyncio.sleep(pause)
                profiler.enable()
                await loop.run_in_executor(None, send, body)
                profiler.disable()
            messages = len(body["messages"])
    finally:
        asyncio.to_thread = to_thread  # type: ignore[assignment]
        await runner.cleanup()
    records = [r for r in read_records(settings.records_dir) if r.get("overhead_ms")]
    timed_turns = records[1 : turns + 1]
    own = [r["overhead_ms"] for r in timed_turns]
    queued = [r.get("queued_ms") or 0.0 for r in timed_turns]
    reasons = sorted({str(r.get("route_reason")) for r in timed_turns})
    print(
        f"{messages} messages, {timed_turns[-1].get('prompt_tokens')} tokens; route "
        f"{reasons}; predicted cached {[r.get('predicted_cached') for r in timed_turns]}"
    )
    print(
        f"own time (overhead_ms) p50 {statistics.median(own):.2f} ms, max {max(own):.2f} "
        f"over {len(own)} turns: {own}"
    )
    print(f"queued_ms (not in overhead_ms) p50 {statistics.median(queued):.2f} ms")
    tails = [r["tail_ms"] for r in timed_turns if r.get("tail_ms") is not None]
    if tails:
        print(
            f"tail_ms (the new text tokenized after dispatch, not in overhead_ms) p50 "
            f"{statistics.median(tails):.2f} ms on {len(tails)} of {len(timed_turns)} turns"
        )
    print(
        "| phase | wall p50 ms | CPU p50 ms | wall max ms | page faults p50 |\n"
        "|---|---|---|---|---|"
    )
    for name, depth in ORDER:
        if name in spent.spent:
            wall = [spent.spent[name].get(i, 0.0) for i in range(turns)]
            cpu = [spent.cpu[name].get(i, 0.0) for i in range(turns)]
            faults = [spent.faults[name].get(i, 0.0) for i in range(turns)]
            print(f"| {'  ' * depth}{name} | {statistics.median(wall):.3f} "
                  f"| {statistics.median(cpu):.3f} | {max(wall):.3f} "
                  f"| {statistics.median(faults):.0f} |")  # fmt: skip
    if not profiled:
        return
    profiler.dump_stats(profile)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs().sort_stats("tottime")
    stats.print_stats(30)
    stats.sort_stats("cumulative").print_stats(60)
    print(out.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=30_000)
    parser.add_argument("--turns", type=int, default=11, help="timed turns")
    parser.add_argument("--profiled", type=int, default=4, help="turns under cProfile")
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--profile", type=Path, default=Path("own_time.prof"))
    parser.add_argument(
        "--pause",
        type=float,
        default=0.3,
        help="seconds between turns (bench-tokens sends a direct turn then)",
    )
    parser.add_argument(
        "--upstream",
        help="a running llama-server to use (its --parallel 2, "
        "its context room for the turns) instead of starting one",
    )
    parser.add_argument(
        "--alternate",
        action="store_true",
        help="a direct appended turn of another conversation before each timed one, on the "
        "server's other slot (as make bench-tokens plays them)",
    )
    parser.add_argument(
        "--skip",
        type=int,
        default=0,
        help="with --upstream: turns an "
        "earlier run sent (its slot holds them: a sliding-window model "
        "reuses no shorter prefix)",
    )
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="kvp-own-"))
    if args.upstream:
        asyncio.run(run(args.upstream, tmp / "proxy", args.tokens, args.turns, args.profiled,
                        args.profile, args.pause, args.skip))  # fmt: skip
        return 0
    model, template = resolve_model(args.model)
    extra = ("--chat-template-file", str(template)) if template else ()
    # bench-tokens' server (two slots), with room for the turns past 32k
    ctx = max(32_768, args.tokens + 1_000 + 150 * (args.turns + args.profiled))
    settings = EmbeddedSettings(model=model, parallel=2, ctx_per_slot=ctx, extra_args=extra)
    server = EmbeddedServer.start(settings, tmp / "llama")
    try:
        asyncio.run(run(server.url, tmp / "proxy", args.tokens, args.turns, args.profiled,
                        args.profile, args.pause, alternate=args.alternate))  # fmt: skip
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
