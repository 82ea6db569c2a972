"""`make bench`: the 13 scenarios (docs/benchmarks.md), direct versus kvproxy.

One llama-server per side (bundled SmolLM2, 2 slots x 8192 tokens, default flags) plays
every selected scenario in order; each scenario opens with the same base system prompt of
>= 4000 tokens (agents share theirs across sessions). Per scenario and side: calls, prompt
tokens, prefilled (Σ ``prompt_n``), cached (Σ ``cache_n``), TTFT p50, the HIT/MISS
sequence, prefill amplification (prefilled / new tokens, bench.rewrite's definition) and
the direct/kvproxy prefill ratio. Writes the table into docs/benchmarks.md and a PNG chart
(one row per scenario, one bar per call, direct above kvproxy).

    python -m bench.suite [--scenarios 6,8] [--words 3600] [--out docs] [--no-write]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.report import DOC, write_section
from bench.rewrite import CallResult, new_tokens
from bench.scenarios import OPENCLAW_MARKER, TOOLS
from bench.workload import chat, document
from proxy.backends.embedded import EmbeddedServer, resolve_model
from proxy.config.settings import EmbeddedSettings
from proxy.testing.process import ProxyProcess, spawn_proxy

Body = dict[str, Any]
RESTART_PROXY: Body = {"restart_proxy": True}
Scenario = Generator[Body, str, None]


def base_prompt(words: int) -> str:
    return "You are a coding agent. Follow these rules.\n" + document(900, words) + "\n"


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


def q(n: int, words: int = 30) -> str:
    return f"Question {n}: " + document(100 + n, words).split("\n", 1)[1]


def tool_call(i: int, name: str = "read") -> dict[str, Any]:
    call = {"id": f"c{i}", "type": "function",
            "function": {"name": name, "arguments": f'{{"path": "f{i}.py"}}'}}  # fmt: skip
    return {"role": "assistant", "content": None, "tool_calls": [call]}


def tool_result(i: int, words: int) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": f"c{i}", "content": document(500 + i, words)}


class Scenarios:
    """The 13 scenarios over one base system prompt."""

    def __init__(self, words: int) -> None:
        self.system = {"role": "system", "content": base_prompt(words)}

    def conversation(self, *turns: str, tools: bool = False) -> Scenario:
        messages = [self.system]
        for text in turns:
            messages.append(user(text))
            reply = yield {"messages": list(messages), **({"tools": TOOLS} if tools else {})}
            messages.append(assistant(reply))

    def s1_cold_prime(self) -> Scenario:
        yield from self.conversation(q(1))

    def s2_plain_append(self) -> Scenario:
        yield from self.conversation(q(2), q(3), q(4), q(5))

    def s3_tool_turn(self) -> Scenario:
        messages = [self.system, user(q(6))]
        yield {"messages": list(messages), "tools": TOOLS}
        messages += [tool_call(1), tool_result(1, 120)]
        yield {"messages": list(messages), "tools": TOOLS}

    def s4_rag_in_user(self) -> Scenario:
        rag = "<context>\n" + document(400, 250) + "\n</context>\n"
        yield from self.conversation(q(7), rag + q(8))

    def s5_session_growth(self) -> Scenario:
        yield from self.conversation(*(q(10 + i) for i in range(7)))

    def s6_rag_in_system(self) -> Scenario:
        messages: list[dict[str, Any]] = []
        for turn in range(4):
            rag = "<context>\n" + document(300 + turn, 100) + "\n</context>\n"
            system = {"role": "system", "content": "You are a coding agent.\n" + rag
                      + self.system["content"]}  # fmt: skip
            messages = [system, *messages[1:], user(q(20 + turn))]
            reply = yield {"messages": list(messages)}
            messages.append(assistant(reply))

    def s7_search_fetch_write(self) -> Scenario:
        messages = [self.system, user("Search, fetch and write a report. " + q(30))]
        for i, name in enumerate(("search", "fetch", "fetch", "write")):
            yield {"messages": list(messages), "tools": TOOLS}
            messages += [tool_call(10 + i, name), tool_result(10 + i, 150)]
        yield {"messages": list(messages), "tools": TOOLS}

    def s8_compaction(self) -> Scenario:
        short = {"role": "system", "content": "You are a coding agent. Use the tools."}
        messages = [short, user("Fix the bug.\n" + self.system["content"])]
        for i, words in enumerate((100, 100, 1400)):
            messages += [tool_call(20 + i), tool_result(20 + i, words)]
            reply = yield {"messages": list(messages), "tools": TOOLS}
        kept = messages[-2:]
        summary = user(f"{OPENCLAW_MARKER}\n\n<summary>\n{document(720, 80)}\n</summary>")
        messages = [short, summary, *kept, assistant(reply), user("Now run the tests.")]
        reply = yield {"messages": list(messages), "tools": TOOLS}
        messages += [assistant(reply), user("And summarize what changed.")]
        yield {"messages": list(messages), "tools": TOOLS}

    def s9_timestamp_in_system(self) -> Scenario:
        messages: list[dict[str, Any]] = []
        for turn in range(4):
            system = {"role": "system", "content": f"Current time: 2026-11-22 10:{turn:02d}:07\n"
                      + self.system["content"]}  # fmt: skip
            messages = [system, *messages[1:], user(q(40 + turn))]
            reply = yield {"messages": list(messages)}
            messages.append(assistant(reply))

    def s10_tools_reordered(self) -> Scenario:
        messages = [self.system]
        for turn in range(4):
            messages.append(user(q(50 + turn)))
            order = TOOLS[turn % 4 :] + TOOLS[: turn % 4]
            reply = yield {"messages": list(messages), "tools": order}
            messages.append(assistant(reply))

    def sessions(self, seeds: list[int], order: list[int], doc_words: int) -> Scenario:
        convs = {s: [self.system, user(document(600 + s, doc_words))] for s in seeds}
        started: set[int] = set()
        for s in order:
            if s in started:
                convs[s].append(user(q(60 + s)))
            started.add(s)
            reply = yield {"messages": list(convs[s])}
            convs[s].append(assistant(reply))

    def s11_more_sessions_than_slots(self) -> Scenario:
        yield from self.sessions([1, 2, 3], [1, 2, 3, 1, 2, 3, 1, 2, 3], 600)

    def s12_evicted_and_back(self) -> Scenario:
        yield from self.sessions([4, 5, 6], [4, 5, 6, 4], 600)

    def s13_proxy_restart(self) -> Scenario:
        messages = [self.system, user(q(70))]
        reply = yield {"messages": list(messages)}
        messages += [assistant(reply), user(q(71))]
        reply = yield {"messages": list(messages)}
        yield RESTART_PROXY
        messages += [assistant(reply), user(q(72))]
        yield {"messages": list(messages)}


NAMES = {
    1: ("cold prime", "s1_cold_prime"),
    2: ("plain chat append x3", "s2_plain_append"),
    3: ("tool turn", "s3_tool_turn"),
    4: ("RAG inlined in the user message", "s4_rag_in_user"),
    5: ("session growth x6", "s5_session_growth"),
    6: ("RAG inserted into the system message", "s6_rag_in_system"),
    7: ("search + fetch + write", "s7_search_fetch_write"),
    8: ("agentic flow + compaction + follow-up", "s8_compaction"),
    9: ("timestamp in the system message", "s9_timestamp_in_system"),
    10: ("tools reordered", "s10_tools_reordered"),
    11: ("3 sessions on 2 slots, interleaved", "s11_more_sessions_than_slots"),
    12: ("a session evicted, then back", "s12_evicted_and_back"),
    13: ("kvproxy restarted mid-session", "s13_proxy_restart"),
}


@dataclass
class Side:
    """One server (and kvproxy in front of it, for the proxied side)."""

    proxied: bool
    tmp: Path
    llama: EmbeddedServer
    proxy: ProxyProcess | None = None
    results: dict[int, list[CallResult]] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return self.proxy.url if self.proxy else self.llama.url

    def restart_proxy(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = spawn_proxy(self.tmp / "proxy", "--upstream", self.llama.url)


def predicted_of(header: str | None) -> int | None:
    """``cached=N`` of kvproxy's ``x-kvproxy-cache`` header."""
    if not header or not header.startswith("cached="):
        return None
    return int(header.split(";")[0].removeprefix("cached="))


def play(side: Side, number: int, scenario: Scenario) -> list[CallResult]:
    results: list[CallResult] = []
    previous: Body | None = None
    reply: str | None = None
    # Agents name their sessions (a UUID): the rules that continue a changed system
    # message or a compaction apply only inside a named session (docs/rules.md).
    session = f"scenario-{number}-{uuid.uuid4()}"
    limits = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(timeout=900, limits=limits) as client:
        while True:
            try:
                body = scenario.send(reply) if reply is not None else next(scenario)
            except StopIteration:
                return results
            if body is RESTART_PROXY:
                side.restart_proxy()
                reply = ""
                continue
            text, timings, headers, ttft = chat(client, side.base, body["messages"], 8, body,
                                                {"x-session-id": session})  # fmt: skip
            results.append(
                CallResult(
                    prompt_n=int(timings.get("prompt_n", 0)),
                    cache_n=int(timings.get("cache_n", 0)),
                    new=new_tokens(client, side.llama.url, body, previous),
                    ttft_ms=ttft,
                    rewrite=headers.get("x-kvproxy-rewrite"),
                    predicted=predicted_of(headers.get("x-kvproxy-cache")),
                )
            )
            previous, reply = body, text


def run_side(proxied: bool, numbers: list[int], words: int,
             model: tuple[Path, Path | None] | None = None,
             ) -> dict[int, list[CallResult]]:  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="kvp-suite-"))
    path, template = model or (None, None)
    extra = ("--chat-template-file", str(template)) if template else ()
    settings = EmbeddedSettings(model=path, parallel=2, ctx_per_slot=8192, extra_args=extra)
    side = Side(proxied, tmp, EmbeddedServer.start(settings, tmp / "llama"))
    if proxied:
        side.proxy = spawn_proxy(tmp / "proxy", "--upstream", side.llama.url)
    scenarios = Scenarios(words)
    try:
        for number in numbers:
            make: Callable[[], Scenario] = getattr(scenarios, NAMES[number][1])
            side.results[number] = play(side, number, make())
            print(f"  {'kvproxy' if proxied else 'direct'} scenario {number} done", flush=True)
        return side.results
    finally:
        if side.proxy is not None:
            side.proxy.stop()
        side.llama.stop()


def outcome(r: CallResult) -> str:
    if r.hit:
        return "HIT"
    return "SURPRISE" if r.prompt_n > 5 * max(1, r.new) else "MISS"


def amplification(results: list[CallResult]) -> float:
    return sum(r.prompt_n for r in results) / max(1, sum(r.new for r in results))


HEADER = (
    "| # | scenario | calls | prompt tokens | direct prefilled | kvproxy prefilled | direct "
    "cached | kvproxy cached | direct TTFT p50 ms | kvproxy TTFT p50 ms | direct calls "
    "| kvproxy calls | direct ampl. | kvproxy ampl. | direct/kvproxy "
    "| kvproxy predicted = actual |\n" + "|---" * 16 + "|"
)


def row(n: int, direct: list[CallResult], via: list[CallResult]) -> str:
    d_pre, v_pre = sum(r.prompt_n for r in direct), sum(r.prompt_n for r in via)
    return (
        f"| {n} | {NAMES[n][0]} | {len(via)} | {sum(r.prompt_n + r.cache_n for r in via)} "
        f"| {d_pre} | {v_pre} | {sum(r.cache_n for r in direct)} "
        f"| {sum(r.cache_n for r in via)} "
        f"| {statistics.median(r.ttft_ms for r in direct):.0f} "
        f"| {statistics.median(r.ttft_ms for r in via):.0f} "
        f"| {' '.join(map(outcome, direct))} | {' '.join(map(outcome, via))} "
        f"| {amplification(direct):.2f} | {amplification(via):.2f} "
        f"| {d_pre / max(1, v_pre):.2f}x "
        f"| {sum(r.predicted == r.cache_n for r in via)}/{len(via)} |"
    )


COLOURS = {"HIT": "#2e7d32", "MISS": "#ef6c00", "SURPRISE": "#c62828"}


def chart(
    direct: dict[int, list[CallResult]], via: dict[int, list[CallResult]], path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    numbers = list(via)
    fig, axes = plt.subplots(len(numbers), 1, figsize=(12, 1.3 * len(numbers) + 1), squeeze=False)
    for ax, n in zip(axes[:, 0], numbers, strict=True):
        for y, results in enumerate((via[n], direct[n])):
            left = 0.0
            for r in results:
                width = max(r.ttft_ms, 1.0)
                ax.barh(y, width, left=left, color=COLOURS[outcome(r)], edgecolor="white")
                ax.text(left + width / 2, y, f"{r.ttft_ms / 1000:.1f}s", ha="center",
                        va="center", fontsize=6, color="white")  # fmt: skip
                left += width
        ax.set_yticks([0, 1], ["kvproxy", "direct"], fontsize=7)
        ax.set_title(f"{n}. {NAMES[n][0]}", fontsize=8, loc="left")
        ax.tick_params(axis="x", labelsize=6)
    axes[-1, 0].set_xlabel("time to first token per call, ms (bars: HIT green, MISS orange, "
                           "SURPRISE red)", fontsize=7)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scenarios", default="", help="e.g. 6,8; default: all 13")
    parser.add_argument("--words", type=int, default=3600, help="base system prompt words")
    parser.add_argument("--out", type=Path, default=DOC.parent, help="where the PNG goes")
    parser.add_argument("--doc", type=Path, default=DOC, help="markdown file to update")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--model", default=None,
                        help="GGUF or packaged name (gemma3-270m); default: SmolLM2")  # fmt: skip
    args = parser.parse_args(argv)
    numbers = [int(x) for x in args.scenarios.split(",") if x.strip()] or list(NAMES)
    unknown = [n for n in numbers if n not in NAMES]
    if unknown:
        parser.error(f"unknown scenarios {unknown}; they are 1-13")
    model = resolve_model(args.model) if args.model else None  # (GGUF, its template)
    direct = run_side(False, numbers, args.words, model)
    via = run_side(True, numbers, args.words, model)
    table = "\n".join([HEADER, *(row(n, direct[n], via[n]) for n in numbers)])
    suffix = f"-{args.model}" if args.model else ""
    png = args.out / f"bench-suite{suffix}.png"
    print(table)
    if not args.no_write:
        args.out.mkdir(parents=True, exist_ok=True)
        chart(direct, via, png)
        command = "make bench" + (f" MODEL={args.model}" if args.model else "")
        write_section(f"suite{suffix}", f"{table}\n\n![per-call TTFT]({png.name})", args.doc,
                      command)  # fmt: skip
        print(f"written: {args.doc}, {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
