"""Keeping ollama's cache: one stable ``num_ctx`` per model and a long enough ``keep_alive``
on every request sent to an ollama upstream (docs/ollama.md).

ollama reloads a model, dropping its prompt cache, whenever a request asks for another
``num_ctx`` than the loaded runner has (OpenClaw once sent 262144), and unloads it after
``keep_alive`` (5 minutes by default) even between two turns of an agent. These rules change
request parameters only, never content, and each is switchable. Pure: ``keep`` takes a body
and returns the body to send and what it replaced; ``ContextMemory`` holds the stable
context per model, learned from ``/api/ps`` or from the first request that set one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from proxy.core.errors import BadRequest

DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
# Characters per token for the "would not fit" check: low on purpose (a real token is
# about 4 characters of English, fewer of code), so a prompt is refused only when even
# this generous count says it cannot fit.
CHARS_PER_TOKEN_HIGH = 5


def parse_duration(value: Any) -> float | None:
    """ollama's ``keep_alive``: a number of seconds, or a Go duration ("5m", "1h30m");
    negative means forever. None when it cannot be read."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    sign = -1.0 if text.startswith("-") else 1.0
    text = text.lstrip("+-")
    try:
        return sign * float(text)
    except ValueError:
        pass
    parts = DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sign * sum(float(n) * UNIT_S[u] for n, u in parts)


@dataclass(frozen=True)
class KeepPolicy:
    num_ctx: int | None = None  # --ollama-num-ctx; None: the loaded one, else the first seen
    keep_alive: str = "30m"  # --ollama-keep-alive; "" turns the keep-alive rule off
    stable_ctx: bool = True  # --ollama-keep-num-ctx off turns the num_ctx rule off

    @property
    def keep_alive_s(self) -> float | None:
        return parse_duration(self.keep_alive) if self.keep_alive else None


@dataclass
class ContextMemory:
    """The context each model runs at: set by ``--ollama-num-ctx``, else learned from
    ``/api/ps`` (the loaded runner's ``context_length``) or the first request's num_ctx."""

    fixed: int | None = None
    learned: dict[str, int] = field(default_factory=dict)

    def learn_loaded(self, ps: Any) -> None:
        for model in (ps or {}).get("models") or [] if isinstance(ps, dict) else []:
            if not isinstance(model, dict):
                continue
            name, ctx = model.get("name") or model.get("model"), model.get("context_length")
            if isinstance(name, str) and isinstance(ctx, int) and ctx > 0:
                self.learned[name] = ctx

    def for_model(self, model: str | None, requested: Any) -> int | None:
        if self.fixed is not None:
            return self.fixed
        key = model or ""
        if key not in self.learned and isinstance(requested, int) and requested > 0:
            self.learned[key] = requested
        return self.learned.get(key)


@dataclass(frozen=True)
class Kept:
    body: dict[str, Any]
    num_ctx_replaced: Any = None  # the client's num_ctx, when another was sent
    keep_alive_replaced: Any = None  # the client's keep_alive, when a longer one was sent


def keep(body: dict[str, Any], policy: KeepPolicy, memory: ContextMemory,
         prompt_chars: int) -> Kept:  # fmt: skip
    """The ollama body to send (``/api/chat`` or ``/api/generate``). Raises ``BadRequest``
    when the prompt cannot fit the model's context even at 5 characters a token (ollama
    would silently cut its beginning: the system prompt and tools)."""
    out = dict(body)
    ctx_replaced: Any = None
    alive_replaced: Any = None
    options = dict(out.get("options") or {})
    if policy.stable_ctx:
        requested = options.get("num_ctx")
        ctx = memory.for_model(out.get("model"), requested)
        if ctx is not None:
            if requested is not None and requested != ctx:
                ctx_replaced = requested
            options["num_ctx"] = ctx
            out["options"] = options
            if prompt_chars // CHARS_PER_TOKEN_HIGH > ctx:
                raise BadRequest(
                    f"the prompt (about {prompt_chars // 4} tokens) does not fit the model's "
                    f"context of {ctx} tokens; ollama would drop its beginning. Shorten it, "
                    "or raise the context (--ollama-num-ctx / OLLAMA_CONTEXT_LENGTH)"
                )
    minimum = policy.keep_alive_s
    if minimum is not None:
        given = parse_duration(out.get("keep_alive"))
        if given is None or (0 <= given < minimum):
            if "keep_alive" in out:
                alive_replaced = out["keep_alive"]
            out["keep_alive"] = policy.keep_alive
    return Kept(out, ctx_replaced, alive_replaced)


def prompt_chars(body: dict[str, Any]) -> int:
    """Characters of what ollama puts into the prompt (messages, prompt, system, tools)."""
    total = len(str(body.get("prompt") or "")) + len(str(body.get("system") or ""))
    for message in body.get("messages") or []:
        if isinstance(message, dict):
            total += len(str(message.get("content") or ""))
            total += len(str(message.get("tool_calls") or ""))
    total += len(str(body.get("tools") or ""))
    return total
