"""`make bench-tokens`: what it costs kvproxy to know a prompt's tokens, and what that adds to
TTFT, in one run against the embedded llama-server (bundled SmolLM2).

1. For conversations of about 1k, 8k, 32k and 128k tokens (a system prompt, tools, turns
   with tool calls and tool results), the time to render and tokenize the request here
   (``LocalTokenizer``: the chat template in Python, llama.cpp's tokenizer through ctypes)
   and through the server (``ServerTokenizer``: ``/apply-template`` and ``/tokenize``), as a
   cold first turn (every cache emptied) and as an appended turn (one more tool call and its
   result on the same conversation). Median of 5.
2. The server's time to prefill its first 512 tokens (``timings.prompt_ms`` of a cold
   512-token prompt, median of 3): the target is that a cold 128k-token prompt is tokenized
   here in less time than that.
3. The TTFT an appended turn (tool call + result) gets on a ~30k-token conversation, direct
   and through kvproxy: one conversation per slot, turns alternating between the two sides so
   that machine noise hits both; the target is < 3 ms added at p50. SmolLM2 is trained (and
   served) at 8k tokens at most, so this part runs on Gemma 3 270M (32k, served by name with
   its Gemma 3 template).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from bench.report import publish
from bench.workload import chat, document
from proxy.backends.embedded import EmbeddedServer, resolve_model
from proxy.backends.upstream import Upstream, make_session
from proxy.config.settings import EmbeddedSettings
from proxy.core.conversation import Conversation
from proxy.records.read import read_records
from proxy.testing.process import spawn_proxy
from proxy.tokens import LocalTokenizer, ServerTokenizer, tokenizer_for

SIZES = (1_000, 8_000, 32_000, 128_000)
TOOLS = [{"type": "function", "function": {
    "name": name, "description": f"{name} a file or command",
    "parameters": {"type": "object", "properties": {"arg": {"type": "string"}},
                   "required": ["arg"]}}} for name in ("read_file", "run", "search")]  # fmt: skip
CHAT = Conversation(kind="chat")


def tool_turn(i: int, words: int = 180) -> list[dict[str, Any]]:
    """A user ask, an assistant tool call, its result and a short answer."""
    arguments = json.dumps({"arg": f"src/{i}.py"})
    call = {"id": f"call_{i}", "type": "function",
            "function": {"name": "read_file", "arguments": arguments}}  # fmt: skip
    return [
        {"role": "user", "content": f"Step {i}: look at src/{i}.py"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": f"call_{i}", "content": document(i, words)},
        {"role": "assistant", "content": f"Read src/{i}.py; it defines {i % 7} functions."},
    ]


def conversation(tokens: int, count: Callable[[dict[str, Any]], int], seed: int = 0
                 ) -> dict[str, Any]:  # fmt: skip
    """A body of about ``tokens`` tokens (``count`` measures one)."""
    system = {"role": "system", "content": "You are a coding agent.\n" + document(seed, 200)}
    body: dict[str, Any] = {"tools": TOOLS, "messages": [system]}
    ask = {"role": "user", "content": "Next step?"}
    step = 0
    while True:
        body["messages"] += tool_turn(seed * 1000 + step)
        step += 1
        full = {**body, "messages": [*body["messages"], ask]}
        if step % 4 == 0 and count(full) >= tokens:
            return full


def appended(body: dict[str, Any], i: int) -> dict[str, Any]:
    return {**body, "messages": [*body["messages"], *tool_turn(10_000 + i, 60)[:3]]}


async def median_ms(fn: Callable[[], Awaitable[Any]], reps: int = 5,
                    before: Callable[[], None] | None = None) -> float:  # fmt: skip
    times = []
    for _ in range(reps):
        if before is not None:
            before()
        t0 = time.perf_counter()
        await fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


async def tokenizing(server: EmbeddedServer) -> tuple[list[str], float, LocalTokenizer]:
    session = make_session(10, 600)
    upstream = Upstream(url=server.url, kind="llama", session=session)
    upstream.props = await upstream.get_json("/props")
    local = await tokenizer_for(upstream, None)
    assert isinstance(local, LocalTokenizer), "the bundled GGUF must tokenize here"
    remote = ServerTokenizer(upstream)

    def count(body: dict[str, Any]) -> int:
        return len(local.pieces.encode(local.render(body)))

    cold = local.forget

    rows = []
    try:
        for size in SIZES:
            body = conversation(size, count, seed=size)
            n = count(body)
            local_cold = await median_ms(lambda b=body: local.prompt_tokens(CHAT, b), before=cold)
            server_cold = await median_ms(lambda b=body: remote.prompt_tokens(CHAT, b))
            await local.prompt_tokens(CHAT, body)  # the conversation so far is known
            turns = iter(range(1000))
            local_append = await median_ms(
                lambda b=body, t=turns: local.prompt_tokens(CHAT, appended(b, next(t)))
            )
            server_append = await median_ms(
                lambda b=body, t=turns: remote.prompt_tokens(CHAT, appended(b, next(t)))
            )
            assert list(await local.prompt_tokens(CHAT, body) or ()) == list(
                await remote.prompt_tokens(CHAT, body) or ()
            )
            rows.append(f"| {n} | {local_cold:.1f} | {server_cold:.1f} | {local_append:.2f} "
                        f"| {server_append:.1f} |")  # fmt: skip
            print(rows[-1], flush=True)
        prefill = []
        for i in range(3):
            prompt = document(900 + i, 600)
            ids = (await remote.tokenize(prompt))[:512]
            async with upstream.request("POST", "/completion", json_body={
                    "prompt": ids, "n_predict": 1, "cache_prompt": False}) as resp:  # fmt: skip
                prefill.append((await resp.json())["timings"]["prompt_ms"])
        return rows, statistics.median(prefill), local
    finally:
        await session.close()


def ttft(server: EmbeddedServer, proxy_url: str, size: int, turns: int
         ) -> tuple[list[float], list[float], int, dict[str, list[float]]]:  # fmt: skip
    """Appended tool turns on a ~``size``-token conversation per side, alternating; and
    per side the TTFT less the server's own prompt time (``timings.prompt_ms``): what the
    server spent on a turn besides its prefill (its template and tokenizer, its RAM cache)
    plus, through kvproxy, kvproxy's own time."""
    bodies: dict[str, dict[str, Any]] = {}
    sides = {"direct": server.url, "kvproxy": proxy_url}
    out: dict[str, list[float]] = {"direct": [], "kvproxy": []}
    besides: dict[str, list[float]] = {"direct": [], "kvproxy": []}
    # no keep-alive: llama-server drops an idle connection after 5 s, and prefills take longer
    with httpx.Client(timeout=1800, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        counted = client.post(server.url + "/apply-template", json={
            "messages": [{"role": "user", "content": "x"}]}).status_code  # fmt: skip
        assert counted == 200

        def count(body: dict[str, Any]) -> int:
            text = client.post(server.url + "/apply-template", json=body).json()["prompt"]
            return len(
                client.post(server.url + "/tokenize", json={"content": text}).json()["tokens"]
            )

        for seed, side in enumerate(sides):
            bodies[side] = conversation(size, count, seed=seed + 7)
            chat(client, sides[side], bodies[side]["messages"], 1, bodies[side])  # prefill
        tokens = count(bodies["direct"])
        for i in range(turns):
            for side, base in sides.items():
                bodies[side] = appended(bodies[side], i)
                _, timings, _, ms = chat(client, base, bodies[side]["messages"], 1,
                                         bodies[side])  # fmt: skip
                out[side].append(ms)
                besides[side].append(ms - float(timings.get("prompt_ms") or 0.0))
    return out["direct"], out["kvproxy"], tokens, besides


def own_time(records: Path, turns: int) -> list[float]:
    """``overhead_ms`` of the last ``turns`` records (the appended turns)."""
    deadline = time.monotonic() + 30
    while True:
        found = [r["overhead_ms"] for r in read_records(records) if r.get("overhead_ms")]
        if len(found) >= turns + 1 or time.monotonic() > deadline:
            return found[-turns:]
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ttft-tokens", type=int, default=30_000)
    parser.add_argument("--ttft-model", default="gemma3-270m",
                        help="GGUF or packaged name for the TTFT part (32k context)")  # fmt: skip
    parser.add_argument("--turns", type=int, default=9)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--llama-args", default="",
                        help="more llama-server flags for the TTFT part, e.g. '--cache-ram 0' "
                        "(the numbers are then not published)")  # fmt: skip
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="kvp-tokens-"))
    server = EmbeddedServer.start(EmbeddedSettings(parallel=1, ctx_per_slot=8192), tmp / "llama")
    try:
        rows, prefill_ms, _ = asyncio.run(tokenizing(server))
    finally:
        server.stop()
    model, template = resolve_model(args.ttft_model)
    extra = ("--chat-template-file", str(template)) if template else ()
    extra += tuple(shlex.split(args.llama_args))
    settings = EmbeddedSettings(model=model, parallel=2, ctx_per_slot=32_768, extra_args=extra)
    server = EmbeddedServer.start(settings, tmp / "llama-ttft")
    proxy = None
    try:
        proxy = spawn_proxy(tmp / "proxy", "--upstream", server.url)
        direct, via, tokens, besides = ttft(server, proxy.url, args.ttft_tokens, args.turns)
        overhead = own_time(proxy.data_dir / "records", args.turns)
    finally:
        if proxy is not None:
            proxy.stop()
        server.stop()
    p50_direct, p50_via = statistics.median(direct), statistics.median(via)
    table = "\n".join([
        "| prompt tokens | local, cold ms | server, cold ms | local, appended turn ms "
        "| server, appended turn ms |", "|---|---|---|---|---|", *rows,
        "", f"Server prefill of its first 512 tokens (cold): {prefill_ms:.0f} ms.", "",
        f"Appended tool turn on a {tokens}-token conversation ({args.ttft_model}, "
        f"{len(direct)} turns per side, "
        f"alternating): TTFT p50 direct {p50_direct:.0f} ms, kvproxy {p50_via:.0f} ms "
        f"(**{p50_via - p50_direct:+.1f} ms**); per turn direct "
        f"{', '.join(f'{t:.0f}' for t in direct)}; kvproxy "
        f"{', '.join(f'{t:.0f}' for t in via)}. kvproxy's own time before sending upstream "
        f"(the record's `overhead_ms`: reading, rewriting, tokenizing, routing) p50 "
        f"{statistics.median(overhead):.1f} ms, max {max(overhead):.1f} ms.", "",
        f"TTFT less the server's own prompt time (`timings.prompt_ms`), p50: direct "
        f"{statistics.median(besides['direct']):.0f} ms, kvproxy "
        f"{statistics.median(besides['kvproxy']):.0f} ms: the server's work on a turn "
        "besides its prefill (with its RAM cache on: saving the other slot's state, "
        "docs/benchmarks.md) plus, through kvproxy, kvproxy's own time."
        + (f" llama-server flags added: `{args.llama_args}`." if args.llama_args else ""),
    ])  # fmt: skip
    publish("tokens", table, not args.no_write and not args.llama_args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
