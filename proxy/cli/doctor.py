"""``kvproxy doctor``: what an upstream's cache can and cannot do, in plain words, and what
to change. ``gather`` reads the server (``/props``, ``/slots``, a slot-action probe,
``/api/ps``, ``/api/show``, the GGUF's metadata where readable) into ``Facts``;
``diagnose`` turns facts into findings and is pure (table-tested)."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proxy.backends.kinds import backend_for
from proxy.backends.upstream import (
    Upstream,
    UpstreamLimits,
    UpstreamSpec,
    detect_kind,
    make_session,
    sane_props,
)
from proxy.core.errors import ProxyError

GIB = 1024**3
# Past this share of RAM for model + KV cache, a laptop starts compressing or swapping pages
# (the seeds' memory table: a 14B model at 32k on 24 GB fell off that cliff).
RAM_SHARE = 0.75
OLLAMA_DEFAULT_KEEP_ALIVE_S = 300


@dataclass(frozen=True)
class ModelShape:
    """What the GGUF says about the KV cache a token costs."""

    arch: str
    layers: int
    kv_heads: int
    key_dim: int
    value_dim: int
    window: int | None = None  # sliding window, when the model has one
    recurrent: bool = False
    file_bytes: int = 0

    @property
    def kv_bytes_per_token(self) -> int:
        """f16 K and V for every layer (llama-server's default cache type)."""
        return 2 * self.layers * self.kv_heads * (self.key_dim + self.value_dim)


@dataclass
class Facts:
    url: str
    kind: str  # "llama" or "ollama"
    slots: int = 0
    ctx_per_slot: int | None = None
    slot_actions: bool | None = None  # --slot-save-path set (None: not probed)
    endpoint_slots: bool | None = None
    endpoint_metrics: bool | None = None
    model_path: str | None = None
    model_readable: bool = False
    shape: ModelShape | None = None
    ram_bytes: int = 0
    client_context: int = 32_768
    swa_full: bool = False
    loaded: list[dict[str, Any]] = field(default_factory=list)  # ollama /api/ps models
    keep_alive_s: int | None = None  # kvproxy's --ollama-keep-alive, when known
    now: float = 0.0  # for ollama's expires_at
    untrusted: list[str] = field(default_factory=list)  # what in /props was not believed


@dataclass(frozen=True)
class Finding:
    level: str  # "ok", "warn" or "fix"
    text: str
    advice: str = ""


def diagnose(f: Facts) -> list[Finding]:
    """Findings, most important first within each topic."""
    return FINDINGS[f.kind](f)


def llama_findings(f: Facts) -> list[Finding]:
    out = [Finding("warn", f"/props: {note}", "check that this URL is the llama-server you "
                   "meant; kvproxy takes the same safe values at start")
           for note in f.untrusted]  # fmt: skip
    if f.slot_actions is False:
        out.append(Finding("fix", "slot files are off: llama-server has no --slot-save-path",
                           "start it with --slot-save-path DIR (kvproxy saves a conversation "
                           "it evicts there and restores it when it comes back)"))  # fmt: skip
    elif f.slot_actions:
        out.append(Finding("ok", "slot files on: evicted conversations are saved and restored"))
    if f.endpoint_slots is False:
        out.append(Finding("warn", "/slots is off: kvproxy cannot see a restart or what a "
                           "direct client put in a slot", "add --slots"))  # fmt: skip
    if f.endpoint_metrics is False:
        out.append(Finding("warn", "/metrics is off", "add --metrics (kvproxy serves it at "
                                                      "/upstream/metrics)"))  # fmt: skip
    if f.ctx_per_slot:
        text = f"{f.slots} slot(s) of {f.ctx_per_slot} tokens each"
        if f.ctx_per_slot < f.client_context:
            out.append(Finding("fix", f"{text}: smaller than the client's context window "
                               f"({f.client_context})", "raise --ctx-size to slots x "
                               f"{f.client_context} (or lower --parallel); a prompt longer "
                               "than a slot is refused or truncated"))  # fmt: skip
        else:
            out.append(Finding("ok", text))
    if not f.model_readable:
        out.append(Finding("warn", f"the model file is not readable here ({f.model_path}): "
                           "kvproxy tokenizes through the server (two round trips a request)",
                           "run kvproxy on the server's host, or pass --tokenizer "
                           "GGUF"))  # fmt: skip
    out += memory_findings(f)
    if f.shape is not None and f.shape.window is not None:
        if f.swa_full:
            out.append(Finding("ok", f"sliding window of {f.shape.window} tokens, served with "
                               "--swa-full: any common prefix is reused, at full KV "
                               "memory"))  # fmt: skip
        else:
            out.append(Finding("warn", f"sliding-window model (window {f.shape.window}): a "
                               "change further back than the window costs a prefill from the "
                               "last context checkpoint, and saved slot files resume nothing",
                               "keep the prompt's changes at its end (kvproxy's rewrite rules "
                               "do), or start llama-server with --swa-full (and kvproxy with "
                               "--upstream-swa-full) if RAM allows; keep --ctx-checkpoints at "
                               "32 or more"))  # fmt: skip
    if f.shape is not None and f.shape.recurrent:
        out.append(Finding("warn", "recurrent/hybrid model: the server keeps one state per "
                           "slot and goes back only to context checkpoints",
                           "avoid edits in the middle of the prompt; keep "
                           "--ctx-checkpoints"))  # fmt: skip
    return out


def memory_findings(f: Facts) -> list[Finding]:
    if f.shape is None or not f.ctx_per_slot:
        return []
    per_token = f.shape.kv_bytes_per_token
    kv = per_token * f.ctx_per_slot * max(1, f.slots)
    need = kv + f.shape.file_bytes
    text = (f"KV cache: {per_token / 1024:.0f} KiB a token ({f.shape.arch}, {f.shape.layers} "
            f"layers); {max(1, f.slots)} x {f.ctx_per_slot} tokens = {kv / GIB:.1f} GiB, "
            f"with the model {need / GIB:.1f} GiB")  # fmt: skip
    if f.ram_bytes and need > RAM_SHARE * f.ram_bytes:
        room = int((RAM_SHARE * f.ram_bytes - f.shape.file_bytes) / per_token)
        return [Finding("fix", f"{text}: over {RAM_SHARE:.0%} of this machine's "
                        f"{f.ram_bytes / GIB:.0f} GiB RAM (pages get compressed or swapped)",
                        f"fit slots x ctx within about {max(0, room)} tokens (fewer --parallel "
                        "or a smaller --ctx-size), or a smaller quantization; --cache-ram "
                        "adds to this")]  # fmt: skip
    return [Finding("ok", text + (f" of {f.ram_bytes / GIB:.0f} GiB RAM" if f.ram_bytes
                                  else ""))]  # fmt: skip


def ollama_findings(f: Facts) -> list[Finding]:
    out = []
    if not f.loaded:
        out.append(Finding("warn", "no model is loaded now (ollama unloaded it, or none has "
                           "run yet): the next request loads it and prefills everything",
                           "kvproxy sends keep_alive with every request (--ollama-keep-alive); "
                           "set OLLAMA_KEEP_ALIVE for clients that bypass it"))  # fmt: skip
    for model in f.loaded:
        name = model.get("name") or model.get("model")
        ctx = model.get("context_length")
        text = f"{name} loaded" + (f" with a context of {ctx} tokens" if ctx else "")
        if ctx and ctx < f.client_context:
            out.append(Finding("fix", f"{text}: smaller than the client's context window "
                               f"({f.client_context}); ollama cuts longer prompts",
                               f"set num_ctx {f.client_context} (OLLAMA_CONTEXT_LENGTH, or "
                               "kvproxy's --ollama-num-ctx); any change of num_ctx reloads "
                               "the model and drops its cache"))  # fmt: skip
        else:
            out.append(Finding("ok", text))
        left = seconds_until(model.get("expires_at"), f.now)
        if left is not None and 0 <= left < 600:
            out.append(Finding("warn", f"{name} unloads in {left / 60:.0f} min (keep_alive): "
                               "the next turn after that prefills everything",
                               "send requests through kvproxy (it raises keep_alive to "
                               "--ollama-keep-alive), or set OLLAMA_KEEP_ALIVE"))  # fmt: skip
    keep = f.keep_alive_s
    if keep is not None and keep <= OLLAMA_DEFAULT_KEEP_ALIVE_S:
        out.append(Finding("warn", f"keep_alive of {keep} s: ollama unloads the model between "
                           "agent turns and the next turn prefills everything",
                           "--ollama-keep-alive 30m or more"))  # fmt: skip
    out.append(Finding("warn", "ollama keeps one prompt cache per loaded model and runner "
                       "slot; kvproxy estimates its tokens (~4 characters each) instead of "
                       "knowing them", "for exact routing and slot files, front "
                       "llama-server"))  # fmt: skip
    return out


FINDINGS: dict[str, Callable[[Facts], list[Finding]]] = {
    "llama": llama_findings, "ollama": ollama_findings}  # fmt: skip


def seconds_until(stamp: Any, now: float) -> float | None:
    """Seconds from ``now`` to an RFC 3339 time as ollama writes them (nanoseconds and a
    zone offset included); None when it cannot be read."""
    if not isinstance(stamp, str):
        return None
    from datetime import datetime

    text = re.sub(r"(\.\d{6})\d+", r"\1", stamp.replace("Z", "+00:00"))
    try:
        return datetime.fromisoformat(text).timestamp() - now
    except ValueError:
        return None


def model_shape(path: Path) -> ModelShape | None:
    """KV-relevant numbers from the GGUF's metadata; None when it cannot be read."""
    import gguf

    from proxy.tokens.gguf import attention_kind

    try:
        fields = gguf.GGUFReader(str(path)).fields
    except (OSError, ValueError):
        return None

    def get(key: str) -> Any:
        field = fields.get(key)
        return field.contents() if field is not None else None

    arch = get("general.architecture")
    layers, heads = get(f"{arch}.block_count"), get(f"{arch}.attention.head_count")
    if not isinstance(layers, int) or not heads:
        return None
    heads = heads if isinstance(heads, int) else max(heads)
    kv_heads = get(f"{arch}.attention.head_count_kv") or heads
    kv_heads = kv_heads if isinstance(kv_heads, int) else max(kv_heads)
    embd = get(f"{arch}.embedding_length") or 0
    key_dim = get(f"{arch}.attention.key_length") or (embd // heads if heads else 0)
    value_dim = get(f"{arch}.attention.value_length") or key_dim
    kind = attention_kind(path)
    return ModelShape(arch, layers, kv_heads, key_dim, value_dim, kind.window,
                      kind.kind == "recurrent", path.stat().st_size)  # fmt: skip


def physical_ram() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


async def gather(url: str, client_context: int, swa_full: bool,
                 limits: UpstreamLimits | None = None) -> Facts:  # fmt: skip
    """Read the upstream (the thin I/O shell around ``diagnose``). Its answers are checked
    like any input: each read is bounded in size and time (``limits``), and /props fields
    of the wrong type or range become findings, not tracebacks."""
    spec = UpstreamSpec.parse(url)
    limits = limits or UpstreamLimits()
    session = make_session(10, 60)
    try:
        kind = spec.kind or await detect_kind(session, spec.url, limits)
        up = Upstream(url=spec.url, kind=kind, session=session, limits=limits)
        facts = Facts(url=spec.url, kind=kind, ram_bytes=physical_ram(),
                      client_context=client_context, swa_full=swa_full,
                      now=time.time())  # fmt: skip
        await GATHER[kind](up, facts)
        return facts
    finally:
        await session.close()


async def gather_llama(up: Upstream, facts: Facts) -> None:
    """llama-server's facts: /props, whether slot actions work, the model file."""
    props, facts.untrusted = sane_props(await up.get_json("/props"))
    facts.slots = props.get("total_slots") or 1
    facts.ctx_per_slot = (props.get("default_generation_settings") or {}).get("n_ctx")
    facts.endpoint_slots = props.get("endpoint_slots")
    facts.endpoint_metrics = props.get("endpoint_metrics")
    facts.model_path = props.get("model_path")
    facts.slot_actions = await probe_slot_actions(up)
    path = Path(facts.model_path) if facts.model_path else None
    facts.model_readable = bool(path and path.is_file())
    if path is not None and facts.model_readable:
        facts.shape = await asyncio.to_thread(model_shape, path)


async def gather_ollama(up: Upstream, facts: Facts) -> None:
    """ollama's facts: the models it has loaded (/api/ps)."""
    ps = await up.get_json("/api/ps")
    models = ps.get("models") if isinstance(ps, dict) else None
    facts.loaded = [m for m in models if isinstance(m, dict)] if isinstance(
        models, list) else []  # fmt: skip


# What doctor reads and concludes, per server kind.
GATHER: dict[str, Callable[[Upstream, Facts], Awaitable[None]]] = {
    "llama": gather_llama, "ollama": gather_ollama}  # fmt: skip


async def probe_slot_actions(up: Upstream) -> bool | None:
    """A slot action with an invalid slot id: "start it with --slot-save-path" without
    one, "invalid slot ID" with one; nothing is saved either way. None: no answer yet."""
    try:
        async with asyncio.timeout(up.limits.json_deadline):
            async with up.request("POST", "/slots/x?action=save", json_body={}) as resp:
                text = (await up.read(resp, up.limits.json_max_bytes)).decode("utf-8", "replace")
    except TimeoutError:
        return None
    if "slot-save-path" in text:
        return False
    return True if "slot" in text.lower() and "invalid" in text.lower() else None


MARKS = {"ok": "ok  ", "warn": "warn", "fix": "FIX "}


def render(facts: Facts, findings: list[Finding]) -> str:
    kind = backend_for(facts.kind).label
    lines = [f"kvproxy doctor: {kind} at {facts.url}"]
    for finding in findings:
        lines.append(f"  [{MARKS[finding.level]}] {finding.text}")
        if finding.advice:
            lines.append(f"         -> {finding.advice}")
    return "\n".join(lines)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("doctor", help="what an upstream's cache can and cannot do, and what "
                       "to change")  # fmt: skip
    p.add_argument("--upstream", required=True, metavar="URL",
                   help="the server to check (llama: / ollama: prefix optional)")  # fmt: skip
    p.add_argument("--client-context", type=int, default=32_768, metavar="TOKENS",
                   help="the context window your agent client assumes")  # fmt: skip
    p.add_argument("--swa-full", action="store_true",
                   help="the server runs with --swa-full (not visible in /props)")  # fmt: skip
    p.add_argument("--timeout", type=float, default=UpstreamLimits.json_deadline,
                   metavar="SECONDS", help="the most time one answer of the upstream may take, "
                   "however slowly it trickles (default %(default)g)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Exit status 1 when something should be fixed, 2 when the upstream cannot be read."""
    limits = UpstreamLimits(json_deadline=args.timeout)
    try:
        facts = asyncio.run(gather(args.upstream, args.client_context, args.swa_full, limits))
    except (ProxyError, OSError, ValueError) as exc:
        print(f"kvproxy doctor: {args.upstream}: {exc}", file=sys.stderr)
        return 2
    findings = diagnose(facts)
    print(render(facts, findings))
    return 1 if any(f.level == "fix" for f in findings) else 0
