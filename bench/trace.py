"""`make bench-trace`: real agent sessions against the ceiling.

Sixteen agent sessions (OpenClaw, Hermes, Claude Code, Codex: three each plus one subagent
per client that shares its parent's system prompt) share a 2-slot llama-server, each
request in its client's own protocol and shape (bench/trace_shapes.py). Interleaved in
rounds (a session's think time is the others' turns): a cold turn, a tool turn, a date that
changes at midnight, an upstream restart, then a compaction once a session's prompt passes
its client's threshold (the summarizer call, then the compacted request). Played direct and
through kvproxy, with the server's host-RAM cache on (its default) and ``--cache-ram 0``.

Per request: tokens prefilled and prefill seconds from the server's /metrics (before and
after), tokens reused from the server's own answer (``timings.cache_n`` or Anthropic's
``cache_read_input_tokens``; through kvproxy, from the upstream answers a logging proxy
sees), never kvproxy's prediction. The ceiling is computed here: the request's prompt
tokenized by a separate llama-server (/apply-template, /tokenize), its longest common
prefix with anything its session (a subagent with its parent) sent or was answered before.
Each request is labelled with a cause by the generator, and its prefilled tokens are
counted under it. Reproducible from ``--seed``; ``--sessions`` scales the trace.
"""

from __future__ import annotations

import argparse
import json
import pickle
import random
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench import trace_shapes as shapes
from bench.logging_upstream import LoggingUpstream
from bench.report import DOC, write_section
from proxy.backends.embedded import EmbeddedServer
from proxy.config.settings import EmbeddedSettings
from proxy.records.read import read_records
from proxy.testing.process import spawn_proxy

SLOTS = 2
CTX = 4096
CAUSES = ("cold", "subagent", "append", "evicted", "restart", "system change", "summarizer",
          "compaction")  # fmt: skip
METRIC = re.compile(r"^llamacpp:(prompt_tokens_total|prompt_seconds_total)\s+([0-9.e+]+)", re.M)
INFERENCE = ("/chat/completions", "/v1/messages", "/v1/responses", "/completion")
ROUNDS = 5  # cold, tool, after midnight, tool after the restart, compaction
SUMMARIZING = "kvproxy +summarizer, RAM cache on"


# -- pure parts: the ceiling, the plan, the causes ---------------------------------------------
def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class Ceiling:
    """What a cache that never evicted would serve: per session, the longest common prefix
    with anything it sent (a prompt followed by its reply) earlier."""

    def __init__(self) -> None:
        self.sent: dict[str, list[list[int]]] = defaultdict(list)

    def reach(self, session: str, tokens: list[int]) -> int:
        return max((common_prefix(s, tokens) for s in self.sent[session]), default=0)

    def remember(self, session: str, prompt: list[int], reply: list[int]) -> None:
        self.sent[session].append([*prompt, *reply])


@dataclass(frozen=True)
class Step:
    action: str  # "turn", "tool", "midnight", "restart"
    session: str = ""


@dataclass(frozen=True)
class Spec:
    name: str
    kind: str
    parent: str | None = None


def plan(seed: int, sessions: int) -> tuple[list[Spec], list[Step]]:
    """Who runs when: ``sessions`` split evenly over the four clients, one of each client's
    being a subagent of its first; rounds in a seeded order, a subagent right after its
    parent in round 1; midnight before round 2, the restart before round 3."""
    per_kind = max(1, sessions // len(shapes.KINDS))
    specs: list[Spec] = []
    for kind in shapes.KINDS:
        parents = max(1, per_kind - 1) if per_kind > 1 else 1
        specs += [Spec(f"{kind}-{i}", kind) for i in range(parents)]
        if per_kind > 1:
            specs.append(Spec(f"{kind}-0/sub", kind, parent=f"{kind}-0"))
    rng = random.Random(seed)
    parents = [s for s in specs if s.parent is None]
    subs = {s.parent: s for s in specs if s.parent}
    steps: list[Step] = []
    for r in range(ROUNDS):
        if r == 2:
            steps.append(Step("midnight"))
        if r == 3:
            steps.append(Step("restart"))
        order = list(parents)
        rng.shuffle(order)
        for spec in order:
            steps.append(Step("tool" if r in (1, 3) else "turn", spec.name))
            sub = subs.get(spec.name)
            if sub is not None and 1 <= r <= 3:
                steps.append(Step("tool" if r == 2 else "turn", sub.name))
    return specs, steps


class Labeler:
    """Each request's cause, from what the generator knows: its session's first request
    (cold, or subagent), the first after the restart, after a date change that reaches its
    prompt, a compaction's two requests, else evicted when ``slots`` or more other
    sessions ran since its last request, else a plain append."""

    def __init__(self, slots: int = SLOTS) -> None:
        self.slots = slots
        self.log: list[str] = []
        self.last: dict[str, int] = {}
        self.flags: dict[str, set[str]] = defaultdict(set)

    def event(self, cause: str, sessions: list[str]) -> None:
        for name in sessions:
            if name in self.last:
                self.flags[name].add(cause)

    def label(self, session: str, subagent: bool = False, phase: str | None = None) -> str:
        flags = self.flags.pop(session, set())
        if phase is not None:
            cause = phase
        elif session not in self.last:
            cause = "subagent" if subagent else "cold"
        elif "restart" in flags:
            cause = "restart"
        elif "system change" in flags:
            cause = "system change"
        elif len(set(self.log[self.last[session] + 1 :]) - {session}) >= self.slots:
            cause = "evicted"
        else:
            cause = "append"
        self.last[session] = len(self.log)
        self.log.append(session)
        return cause


# -- one request against the server -----------------------------------------------------------
@dataclass
class Result:
    session: str
    kind: str
    cause: str
    prompt: int  # the server's: prefilled + cached
    cached: int
    prefilled: int
    seconds: float
    tokens: int  # this bench's tokenization of the prompt
    ceiling: int


@dataclass
class Run:
    name: str
    proxied: bool
    cache_ram: bool
    results: list[Result] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    stats: str = ""

    def total(self, attr: str) -> float:
        return sum(getattr(r, attr) for r in self.results)

    @property
    def hit(self) -> float:
        return self.total("cached") / max(1, self.total("prompt"))

    @property
    def ceiling(self) -> float:
        return self.total("ceiling") / max(1, self.total("tokens"))


def metrics(llama_url: str) -> dict[str, float]:
    text = httpx.get(llama_url + "/metrics", timeout=30).text
    return {k: float(v) for k, v in METRIC.findall(text)}


def parse_stream(raw: str) -> tuple[str, int | None]:
    """The reply's text and the tokens the server says it reused, from an SSE answer in
    any of the three protocols."""
    text: list[str] = []
    cached: int | None = None
    for line in raw.splitlines():
        if not line.startswith("data:") or line.endswith("[DONE]"):
            continue
        try:
            event = json.loads(line[5:])
        except ValueError:
            continue
        for choice in event.get("choices") or []:
            text.append((choice.get("delta") or {}).get("content") or "")
        if event.get("type") == "content_block_delta":
            text.append(event["delta"].get("text") or "")
        if event.get("type") == "response.output_text.delta":
            text.append(event.get("delta") or "")
        timings = event.get("timings") or {}
        if "cache_n" in timings:
            cached = int(timings["cache_n"])
        usage = (event.get("message") or {}).get("usage") or {}
        if "cache_read_input_tokens" in usage and cached is None:
            cached = int(usage["cache_read_input_tokens"])
    return "".join(text), cached


class Tokenizer:
    """A separate llama-server that renders and tokenizes prompts for the ceiling."""

    def __init__(self, work: Path) -> None:
        settings = EmbeddedSettings(parallel=1, ctx_per_slot=CTX)
        self.server = EmbeddedServer.start(settings, work / "tokenizer")
        self.client = httpx.Client(base_url=self.server.url, timeout=120)

    def prompt(self, chat: shapes.Chat) -> list[int]:
        body = {"messages": chat["messages"], **({"tools": chat["tools"]} if chat["tools"] else {})}
        text = self.client.post("/apply-template", json=body).json()["prompt"]
        return self.tokens(text, special=True)

    def tokens(self, text: str, special: bool = False) -> list[int]:
        body = {"content": text, "add_special": special, "parse_special": special}
        return list(self.client.post("/tokenize", json=body).json()["tokens"])

    def stop(self) -> None:
        self.client.close()
        self.server.stop()


# -- a run ------------------------------------------------------------------------------------
def start_llama(cache_ram: bool, work: Path, port: int | None = None) -> EmbeddedServer:
    extra = () if cache_ram else ("--cache-ram", "0")
    settings = EmbeddedSettings(parallel=SLOTS, ctx_per_slot=CTX, extra_args=extra)
    return EmbeddedServer.start(settings, work / "llama", port)


class Player:
    def __init__(self, run: Run, work: Path, tokenizer: Tokenizer, seed: int,
                 sessions: int) -> None:  # fmt: skip
        self.run, self.work, self.tok = run, work, tokenizer
        self.specs, self.steps = plan(seed, sessions)
        rng = random.Random(seed)
        self.sessions: dict[str, shapes.Session] = {}
        for spec in self.specs:
            parent = self.sessions.get(spec.parent) if spec.parent else None
            self.sessions[spec.name] = shapes.Session(
                kind=spec.kind, name=spec.name, family=spec.parent or spec.name,
                sid=shapes.sid_of(rng), started_day=0, subagent=parent is not None,
                parent_sid=parent.sid if parent and spec.kind in ("claude", "codex") else None,
            )  # fmt: skip
        self.day = 0
        self.labels = Labeler()
        self.ceiling = Ceiling()
        self.llama = start_llama(run.cache_ram, work)
        self.logging = LoggingUpstream(self.llama.url).__enter__() if run.proxied else None
        rules = ("--rewrite", "all,summarizer") if run.name == SUMMARIZING else ()
        # kvproxy is told the server's RAM cache setting (an external upstream's is unknown)
        ram = ("--upstream-cache-ram", "8192" if run.cache_ram else "0")
        self.proxy = (
            spawn_proxy(work / "proxy", "--upstream", self.logging.url, *ram, *rules)
            if self.logging
            else None
        )
        self.base = self.proxy.url if self.proxy else self.llama.url
        self.client = httpx.Client(timeout=900, limits=httpx.Limits(max_keepalive_connections=0))

    def close(self) -> None:
        self.client.close()
        if self.proxy:
            self.run.records = [
                r for r in read_records(self.proxy.data_dir / "records")
                if r.get("path") in ("/v1/chat/completions", "/v1/messages", "/v1/responses")
                and not r.get("warm")
            ]  # fmt: skip
            stats = subprocess.run(
                [sys.executable, "-m", "proxy", "stats", "--by", "session", "--data-dir",
                 str(self.proxy.data_dir)], capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            self.run.stats = stats.stdout + stats.stderr
            self.proxy.stop()
        if self.logging:
            self.logging.__exit__(None, None, None)
        self.llama.stop()

    def restart(self) -> None:
        time.sleep(3)  # think time: kvproxy saves idle slots meanwhile
        port = self.llama.port
        self.llama.stop()
        self.llama = start_llama(self.run.cache_ram, self.work, port)

    def send(self, session: shapes.Session, cause: str, summarize: bool = False) -> str:
        out = shapes.request(session, self.day, summarize)
        tokens = self.tok.prompt(out.chat)
        reach = self.ceiling.reach(session.family, tokens)
        before = metrics(self.llama.url)
        seen = len(self.logging.exchanges) if self.logging else 0
        with self.client.stream("POST", self.base + out.path, json=out.body,
                                headers=out.headers) as resp:  # fmt: skip
            raw = resp.read().decode(errors="replace")
            if resp.status_code != 200:
                raise RuntimeError(f"{session.name} {out.path}: {resp.status_code} {raw[:400]}")
        reply, cached = parse_stream(raw)
        if self.logging:  # the server's own answers, as the logging proxy saw them
            ups = [e for e in self.logging.exchanges[seen:] if e.path.endswith(INFERENCE)]
            cached = sum(e.cache_n or 0 for e in ups)
        after = metrics(self.llama.url)
        prefilled = int(after.get("prompt_tokens_total", 0) - before.get("prompt_tokens_total", 0))
        seconds = after.get("prompt_seconds_total", 0) - before.get("prompt_seconds_total", 0)
        self.ceiling.remember(session.family, tokens, self.tok.tokens(reply))
        session.calls += 1
        session.pending = reply
        self.run.results.append(Result(
            session.name, session.kind, cause, prefilled + (cached or 0), cached or 0,
            prefilled, seconds, len(tokens), reach))  # fmt: skip
        return reply

    def play(self) -> Run:
        names = [s.name for s in self.specs]
        for step in self.steps:
            if step.action == "midnight":
                self.day += 1
                dated = [n for n in names if self.sessions[n].kind != "hermes"]
                self.labels.event("system change", dated)
                continue
            if step.action == "restart":
                self.restart()
                self.labels.event("restart", names)
                continue
            self.step(self.sessions[step.session], step.action == "tool")
        return self.run

    def step(self, session: shapes.Session, tool: bool) -> None:
        last = next((r for r in reversed(self.run.results) if r.session == session.name), None)
        over = last is not None and last.tokens >= shapes.COMPACT_AT[session.kind]
        if over and not session.compacted and not session.subagent:
            shapes.echo(session, tool=False)
            cause = self.labels.label(session.name, phase="summarizer")
            summary = self.send(session, cause, summarize=True)
            shapes.compact(session, summary.strip() or "(empty)", self.day)
            self.send(session, self.labels.label(session.name, phase="compaction"))
            return
        shapes.turn(session, tool, self.day)
        if session.calls == 0:
            session.started_day = self.day
        self.send(session, self.labels.label(session.name, subagent=session.subagent))


# -- the report -------------------------------------------------------------------------------
def run_table(run: Run) -> str:
    rows = [f"**{run.name}**\n",
            "| cause | requests | prompt tokens | ceiling | cached | prefilled | prefill s "
            "| beyond the ceiling |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for cause in [*CAUSES, "all"]:
        rs = [r for r in run.results if cause in ("all", r.cause)]
        if not rs:
            continue
        beyond = sum(max(0, r.prefilled - (r.prompt - min(r.ceiling, r.prompt))) for r in rs)
        name = "**all**" if cause == "all" else cause
        rows.append(
            f"| {name} | {len(rs)} | {sum(r.prompt for r in rs)} | {sum(r.ceiling for r in rs)} "
            f"| {sum(r.cached for r in rs)} | {sum(r.prefilled for r in rs)} "
            f"| {sum(r.seconds for r in rs):.1f} | {beyond} |"
        )
    return "\n".join(rows)


def summary_table(runs: list[Run]) -> str:
    rows = [
        "| run | requests | hit rate | ceiling | share of the ceiling | prefilled "
        "| prefill s | kvproxy's ceiling (records) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        theirs = "-"
        if run.records:
            got = [r.get("ceiling_tokens") for r in run.records]
            prompts = sum(r.get("prompt_tokens") or 0 for r in run.records)
            theirs = f"{sum(g or 0 for g in got) / max(1, prompts):.1%} ({len(got)} records)"
        rows.append(
            f"| {run.name} | {len(run.results)} | {run.hit:.1%} | {run.ceiling:.1%} "
            f"| {run.hit / max(1e-9, run.ceiling):.1%} | {int(run.total('prefilled'))} "
            f"| {run.total('seconds'):.1f} | {theirs} |"
        )
    return "\n".join(rows)


def chart(runs: list[Run], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    names = [r.name.replace(", ", "\n") for r in runs]
    x = range(len(runs))
    left.bar([i - 0.2 for i in x], [r.ceiling for r in runs], 0.4, label="ceiling", color="#bbb")
    left.bar([i + 0.2 for i in x], [r.hit for r in runs], 0.4, label="hit rate", color="#2a7")
    left.set_xticks(list(x), names, fontsize=8)
    left.set_ylim(0, 1)
    left.set_ylabel("share of prompt tokens")
    left.legend(loc="lower right")
    left.set_title("Hit rate against the ceiling")
    bottom = [0.0] * len(runs)
    for cause in CAUSES:
        vals = [sum(r.prefilled for r in run.results if r.cause == cause) for run in runs]
        right.bar(list(x), vals, 0.6, bottom=bottom, label=cause)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    right.set_xticks(list(x), names, fontsize=8)
    right.set_ylabel("tokens prefilled")
    right.set_title("Tokens prefilled, by cause")
    right.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def kvproxy_check(runs: list[Run]) -> str:
    """Per request, kvproxy's ceiling_tokens beside this bench's (the first differences)."""
    lines = []
    for run in runs:
        if not run.records or len(run.records) != len(run.results):
            continue
        diff = [(res, rec.get("ceiling_tokens")) for res, rec in
                zip(run.results, run.records, strict=True)
                if rec.get("ceiling_tokens") != res.ceiling]  # fmt: skip
        lines.append(f"{run.name}: {len(run.results) - len(diff)} of {len(run.results)} "
                     "requests with the same ceiling as kvproxy's record")  # fmt: skip
        for res, theirs in diff[:12]:
            lines.append(f"  {res.session} {res.cause}: bench {res.ceiling} kvproxy {theirs} "
                         f"(prompt {res.prompt}, tokenized here {res.tokens})")  # fmt: skip
    return "\n".join(lines)


CONFIGS = [
    ("direct, RAM cache on", False, True),
    ("kvproxy, RAM cache on", True, True),
    ("direct, --cache-ram 0", False, False),
    ("kvproxy, --cache-ram 0", True, False),
    (SUMMARIZING, True, True),
]


def report(runs: list[Run], sessions: int, seed: int, seconds: float, write: bool) -> None:
    """The tables (and, with ``write``, the chart and docs/benchmarks.md's section)."""
    for run in runs:
        if run.stats:
            print(f"\n{run.name}: kvproxy stats --by session\n{run.stats}")
    print(kvproxy_check(runs))
    tables = "\n\n".join(run_table(r) for r in runs)
    png = DOC.parent / "bench-trace.png"
    command = f"make bench-trace{' SESSIONS=' + str(sessions) if sessions != 16 else ''}"
    if any(r.name == SUMMARIZING for r in runs):
        command += " SUMMARIZER=1"
    text = (
        f"{sessions} sessions, seed {seed}, {SLOTS} slots, "
        f"{seconds:.0f} s in all:\n\n{summary_table(runs)}\n\n{tables}"
    )
    print(text)
    if write:
        chart(runs, png)
        write_section("trace", f"{text}\n\n![hit rate against the ceiling]({png.name})",
                      command=command)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=20)
    parser.add_argument("--sessions", type=int, default=16, help="split over the 4 clients")
    parser.add_argument("--quick", action="store_true", help="8 sessions, 2 runs")
    parser.add_argument("--only", help="runs by number, e.g. 1,3 (1-4; 5: --summarizer's)")
    parser.add_argument("--no-write", action="store_true", help="do not update the docs")
    parser.add_argument(
        "--summarizer",
        action="store_true",
        help="one more run: kvproxy with the opt-in summarizer rule, RAM on",
    )
    parser.add_argument("--save", type=Path, help="keep the runs played in this file")
    parser.add_argument(
        "--compose",
        nargs="+",
        type=Path,
        help="report runs kept by --save (runs played apart), play none",
    )
    args = parser.parse_args(argv)
    sessions = 8 if args.quick else args.sessions
    if args.compose:
        kept = [r for f in args.compose for r in pickle.loads(f.read_bytes())]
        order = [name for name, _, _ in CONFIGS]
        kept.sort(key=lambda r: order.index(r.name))
        report(kept, sessions, args.seed, 0, not args.no_write)
        return
    configs = CONFIGS[:5] if args.summarizer else CONFIGS[:4]
    if args.quick:
        configs = configs[2:4]
    if args.only:
        configs = [CONFIGS[int(i) - 1] for i in args.only.split(",")]
    work = Path(tempfile.mkdtemp(prefix="kvp-trace-"))
    tokenizer = Tokenizer(work)
    runs: list[Run] = []
    t0 = time.monotonic()
    try:
        for i, (name, proxied, cache_ram) in enumerate(configs):
            player = Player(Run(name, proxied, cache_ram), work / f"run{i}", tokenizer,
                            args.seed, sessions)  # fmt: skip
            try:
                runs.append(player.play())
            finally:
                player.close()
            if args.save:
                args.save.write_bytes(pickle.dumps(runs))
            print(summary_table(runs[-1:]), f"({time.monotonic() - t0:.0f} s)", flush=True)
    finally:
        tokenizer.stop()
    report(runs, sessions, args.seed, time.monotonic() - t0, not args.no_write)


if __name__ == "__main__":
    main()
