"""Agent-like conversations and a driver that plays them against a server or kvproxy.

Each conversation opens with a long, distinct user turn (a document to work on) and then
appends short turns, replying with what the model said, as agent clients do. The driver
interleaves conversations turn by turn and reads, per request, the server's own counters
(``timings.cache_n`` reused, ``timings.prompt_n`` prefilled) and kvproxy's prediction
(the ``x-kvproxy-cache`` header).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

WORDS = (
    "cache",
    "slot",
    "prefix",
    "token",
    "model",
    "server",
    "agent",
    "request",
    "stream",
    "budget",
    "window",
    "context",
    "memory",
    "layer",
    "vector",
    "index",
    "route",
    "queue",
    "disk",
    "restore",
    "save",
    "offset",
    "hash",
    "block",
    "batch",
    "kernel",
    "thread",
    "socket",
    "packet",
    "header",
    "payload",
    "latency",
    "throughput",
    "summary",
    "tool",
    "result",
)


def document(seed: int, words: int) -> str:
    """Deterministic filler prose, distinct per seed."""
    rng = random.Random(seed)
    sentences = []
    while sum(len(s.split()) for s in sentences) < words:
        n = rng.randint(6, 14)
        sentences.append(" ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + ".")
    return f"Document {seed}:\n" + " ".join(sentences)


@dataclass
class Conversation:
    seed: int
    messages: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def start(cls, seed: int, words: int) -> Conversation:
        system = {"role": "system", "content": "You are a careful assistant. Answer briefly."}
        first = {
            "role": "user",
            "content": document(seed, words) + "\n\nSummarize the document in one line.",
        }
        return cls(seed, [system, first])

    def follow_up(self, turn: int) -> None:
        self.messages.append({"role": "user", "content": f"Turn {turn}: name one more keyword."})


@dataclass
class Call:
    conversation: int
    turn: int
    prompt_n: int  # tokens prefilled
    cache_n: int  # tokens reused
    predicted: int | None  # kvproxy's prediction (header), None when direct
    slot: str | None
    ttft_ms: float

    @property
    def prompt_tokens(self) -> int:
        return self.prompt_n + self.cache_n


def parse_cache_header(value: str | None) -> tuple[int | None, str | None]:
    if not value:
        return None, None
    parts = dict(p.strip().split("=", 1) for p in value.split(";"))
    return int(parts["cached"]), parts.get("slot")


def chat(
    client: httpx.Client,
    base: str,
    messages: list[dict[str, Any]],
    max_tokens: int,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[str, dict[str, Any], httpx.Headers, float]:
    """One streamed chat completion: (text, timings, headers, ms to the first content);
    ``headers``: the client's own (a session name, as agents send one)."""
    body = {
        "max_tokens": max_tokens,
        **{k: v for k, v in (extra or {}).items() if k != "messages"},
        "messages": messages,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    ttft = None
    text: list[str] = []
    timings: dict[str, Any] = {}
    with client.stream("POST", base + "/v1/chat/completions", json=body,
                       headers=headers) as resp:  # fmt: skip
        resp.raise_for_status()
        for line in resp.iter_lines():
            if not line.startswith("data:") or line.endswith("[DONE]"):
                continue
            event = json.loads(line[5:])
            if event.get("timings"):
                timings = event["timings"]
            for choice in event.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    ttft = ttft if ttft is not None else (time.perf_counter() - t0) * 1000
                    text.append(piece)
        headers = resp.headers
    ttft = ttft if ttft is not None else (time.perf_counter() - t0) * 1000
    return "".join(text), timings, headers, ttft


def play(
    base: str,
    conversations: list[Conversation],
    turns: int,
    max_tokens: int = 8,
    first_turn: int = 0,
    reply: str | None = None,
) -> list[Call]:
    """Interleave the conversations turn by turn (A1 B1 C1 ... A2 B2 ...). ``reply`` is
    sent back as each assistant message instead of the model's (a model whose weights are
    noise: tests/synthetic_gguf.py)."""
    calls: list[Call] = []
    # llama-server closes a connection after a chunked stream: one connection per call.
    with httpx.Client(timeout=600, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        for turn in range(first_turn, first_turn + turns):
            for i, conv in enumerate(conversations):
                if turn > 0 and conv.messages[-1]["role"] == "assistant":
                    conv.follow_up(turn)
                text, timings, headers, ttft = chat(client, base, conv.messages, max_tokens)
                conv.messages.append({"role": "assistant", "content": reply or text})
                predicted, slot = parse_cache_header(headers.get("x-kvproxy-cache"))
                calls.append(
                    Call(
                        conversation=i,
                        turn=turn,
                        prompt_n=int(timings.get("prompt_n", 0)),
                        cache_n=int(timings.get("cache_n", 0)),
                        predicted=predicted,
                        slot=slot,
                        ttft_ms=ttft,
                    )
                )
    return calls


def ideal_prefill(calls: list[Call]) -> int:
    """Tokens that were new in each call: the whole first prompt of a conversation, then
    only what its previous prompt did not already contain."""
    seen: dict[int, int] = {}
    total = 0
    for call in calls:
        total += call.prompt_tokens - seen.get(call.conversation, 0)
        seen[call.conversation] = call.prompt_tokens
    return total
