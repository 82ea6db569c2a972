"""`make bench-rewrite`: the cache-breaking scenarios, direct versus through kvproxy.

Each scenario (bench.scenarios) runs twice in this process against a fresh llama-server
(bundled SmolLM2, 1 slot of 8192 tokens): direct, and through kvproxy. Per call: the server's own
``prompt_n`` (prefilled) and ``cache_n``; per scenario: tokens prefilled, TTFT p50, HIT/MISS
per call and the prefill amplification, tokens prefilled / tokens new, where "new" counts
the tokens of the lines (and 4 per message for the template) that the previous request of
the same scenario did not contain. 1.0 is the physical limit. The table goes into
docs/benchmarks.md between the rewrite markers.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.report import publish
from bench.scenarios import SCENARIOS, Scenario
from bench.workload import chat
from proxy.backends.embedded import EmbeddedServer
from proxy.config.settings import EmbeddedSettings
from proxy.testing.process import spawn_proxy

TEMPLATE_TOKENS = 4


@dataclass
class CallResult:
    prompt_n: int
    cache_n: int
    new: int
    ttft_ms: float
    rewrite: str | None
    predicted: int | None = None  # kvproxy's x-kvproxy-cache prediction (None: direct)

    @property
    def hit(self) -> bool:
        """The cache survived: little more than the new tokens was prefilled."""
        return self.prompt_n <= max(1.25 * self.new, self.new + 32)


def message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    calls = "".join(str(call) for call in message.get("tool_calls") or ())
    return (content or "") + calls


def new_tokens(client: httpx.Client, base: str, body: dict, previous: dict | None) -> int:
    """Tokens of the messages the previous request did not contain (for a changed system
    message, only its changed lines), plus the template's few tokens per new message."""
    old = [repr(m) for m in previous["messages"]] if previous else []
    old_system = (
        message_text(previous["messages"][0])
        if previous and previous["messages"][0].get("role") == "system"
        else None
    )
    texts, count = [], 0
    for message in body["messages"]:
        if repr(message) in old:
            continue
        count += 1
        text = message_text(message)
        if message.get("role") == "system" and old_system is not None:
            seen = set(old_system.splitlines())
            text = "\n".join(line for line in text.splitlines() if line not in seen)
        texts.append(text)
    joined = "\n".join(t for t in texts if t)
    tokens = client.post(base + "/tokenize", json={"content": joined}).json()["tokens"]
    return max(1, len(tokens) + TEMPLATE_TOKENS * count)


@dataclass
class Session:
    """A scenario being played; it can be paused and resumed against another base URL."""

    scenario: Scenario
    reply: str | None = None
    previous: dict | None = None
    started: bool = False
    # Agents name their sessions: the rules that continue a changed system message or a
    # compaction apply only inside a named session (docs/rules.md).
    name: str = field(default_factory=lambda: f"bench-{uuid.uuid4()}")


def run(
    base: str, tokenize_base: str, scenario: Scenario | Session, limit: int | None = None
) -> list[CallResult]:
    session = scenario if isinstance(scenario, Session) else Session(scenario)
    results: list[CallResult] = []
    limits = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(timeout=600, limits=limits) as client:
        while limit is None or len(results) < limit:
            try:
                if session.started:
                    body = session.scenario.send(session.reply or "")
                else:
                    body, session.started = next(session.scenario), True
            except StopIteration:
                break
            text, timings, headers, ttft = chat(client, base, body["messages"], 8, body,
                                                {"x-session-id": session.name})  # fmt: skip
            results.append(
                CallResult(
                    prompt_n=int(timings.get("prompt_n", 0)),
                    cache_n=int(timings.get("cache_n", 0)),
                    new=new_tokens(client, tokenize_base, body, session.previous),
                    ttft_ms=ttft,
                    rewrite=headers.get("x-kvproxy-rewrite"),
                )
            )
            session.previous, session.reply = body, text
    return results


def side(name: str, proxied: bool) -> list[CallResult]:
    tmp = Path(tempfile.mkdtemp(prefix="kvp-rewrite-"))
    llama = EmbeddedServer.start(EmbeddedSettings(parallel=1, ctx_per_slot=8192), tmp / "llama")
    proxy = spawn_proxy(tmp / "proxy", "--upstream", llama.url) if proxied else None
    try:
        return run(proxy.url if proxy else llama.url, llama.url, SCENARIOS[name]())
    finally:
        if proxy:
            proxy.stop()
        llama.stop()


def amplification(results: list[CallResult]) -> float:
    return sum(r.prompt_n for r in results) / max(1, sum(r.new for r in results))


def marks(results: list[CallResult]) -> str:
    return " ".join("HIT" if r.hit else "MISS" for r in results)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-write", action="store_true", help="do not update the docs")
    parser.add_argument("--only", default=None, help="run the scenarios whose name has this")
    args = parser.parse_args(argv)
    rows = [
        "| scenario | calls | direct prefilled | kvproxy prefilled | new | direct ampl. "
        "| kvproxy ampl. | direct TTFT p50 ms | kvproxy TTFT p50 ms | direct | kvproxy "
        "| rules applied |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for name in SCENARIOS:
        if args.only and args.only not in name:
            continue
        direct, via = side(name, False), side(name, True)
        applied = sorted({r.rewrite for r in via if r.rewrite and r.rewrite != "none"})
        rows.append(
            f"| {name} | {len(via)} | {sum(r.prompt_n for r in direct)} "
            f"| {sum(r.prompt_n for r in via)} | {sum(r.new for r in via)} "
            f"| {amplification(direct):.2f} | {amplification(via):.2f} "
            f"| {statistics.median(r.ttft_ms for r in direct):.0f} "
            f"| {statistics.median(r.ttft_ms for r in via):.0f} "
            f"| {marks(direct)} | {marks(via)} | {', '.join(applied) or 'none'} |"
        )
        print(rows[-1], flush=True)
        if name.startswith("8 "):
            d, v = direct[-2], via[-2]
            notes.append(
                f"Scenario 8, first call after the compaction: TTFT direct {d.ttft_ms:.0f} ms, "
                f"kvproxy {v.ttft_ms:.0f} ms (**{d.ttft_ms / v.ttft_ms:.1f}x**); prefilled "
                f"direct {d.prompt_n}, kvproxy {v.prompt_n} tokens."
            )
            print(notes[-1], flush=True)
    table = "\n".join(rows) + ("\n\n" + "\n".join(notes) if notes else "")
    publish("rewrite", table, not args.no_write and not args.only)


if __name__ == "__main__":
    main()
