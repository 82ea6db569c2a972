"""What each server kind does differently with a dialect request, in one table.

A kind answers two questions: which upstream call carries a client's request (the same
path in its own dialect, or a bridge to the server's own API), and what the body must carry
on its way (slot pinning on llama-server; a stable ``num_ctx`` and a long ``keep_alive`` on
ollama). Adding a kind is one class here and one entry in ``KINDS``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from proxy.backends import ollama_bridge, ollama_keep, openai_bridge
from proxy.backends.ollama_keep import ContextMemory, KeepPolicy
from proxy.backends.upstream import Upstream
from proxy.core.conversation import Conversation
from proxy.core.errors import ProxyError
from proxy.dialects.base import DialectBase

NATIVE, OLLAMA_ON_LLAMA, OPENAI_ON_OLLAMA = "native", "ollama-on-llama", "openai-on-ollama"
# Anthropic Messages and OpenAI Responses requests go as chat: to llama-server's chat
# endpoint (its own endpoints for them drop ``id_slot``), or to ollama's /api/chat.
VIA_CHAT, VIA_OLLAMA_CHAT = "via-chat", "via-ollama-chat"
BRIDGED_FAMILIES = ("anthropic", "responses")


@dataclass(frozen=True)
class UpstreamCall:
    """One request as it goes to one upstream: its path, body, and how its answer is
    relayed (``NATIVE`` or a bridge)."""

    path: str
    body: dict[str, Any]
    how: str = NATIVE


@dataclass(frozen=True)
class Placement:
    """Where the slot manager put the request, as a kind needs to know it."""

    slot: int
    isolated: bool = False  # the slot holds another principal's content: reuse none of it
    ollama_ctx: ContextMemory = field(default_factory=ContextMemory)


@dataclass(frozen=True)
class Prepared:
    """The body to send, and what kvproxy replaced in it (for the record)."""

    body: dict[str, Any]
    replaced: dict[str, Any] | None = None


class Backend(Protocol):
    kind: str
    label: str  # the server's name, for people
    pins: bool  # routes to a slot of its own choosing (``id_slot``), has /props and /slots
    state_path: str  # what it holds now: after a restart or an unload, nothing
    answers_ollama_reads: bool  # /api/tags, /api/show, /api/version synthesized by kvproxy
    tokenizes: bool  # /tokenize and /apply-template: kvproxy's tokens can be exact

    def lost_cache(self, answer: Any) -> bool: ...

    def slot_count(self, props: Mapping[str, Any]) -> int: ...

    async def learn_context(self, upstream: Upstream, memory: ContextMemory,
                            fixed: int) -> None: ...  # fmt: skip

    def call(self, dialect: DialectBase, conv: Conversation, raw_path: str) -> UpstreamCall: ...

    def prepare(self, call: UpstreamCall, dialect: DialectBase, where: Placement,
                keep: KeepPolicy) -> Prepared: ...  # fmt: skip


class LlamaServer:
    """llama-server: every dialect but ollama's is its own; requests are pinned."""

    kind = "llama"
    label = "llama-server"
    pins = True
    state_path = "/slots"
    answers_ollama_reads = True
    tokenizes = True

    def lost_cache(self, answer: Any) -> bool:
        """``/slots`` with every slot idle and empty: a restart. Unknown shapes are not."""
        if not isinstance(answer, list) or not answer:
            return False
        slots = [s for s in answer if isinstance(s, dict)]
        return len(slots) == len(answer) and all(
            not s.get("is_processing") and not s.get("n_prompt_tokens") and not
            (s.get("prompt") or s.get("tokens"))
            for s in slots
        )  # fmt: skip

    def slot_count(self, props: Mapping[str, Any]) -> int:
        return int(props.get("total_slots") or 1)

    async def learn_context(self, upstream: Upstream, memory: ContextMemory,
                            fixed: int) -> None:  # fmt: skip
        """llama-server's context is fixed at its start: nothing to learn."""

    def call(self, dialect: DialectBase, conv: Conversation, raw_path: str) -> UpstreamCall:
        if dialect.family == "ollama":
            endpoint = "chat" if conv.kind == "chat" else "generate"
            path, body = ollama_bridge.upstream_request(conv, endpoint)
            return UpstreamCall(path, body, OLLAMA_ON_LLAMA)
        if dialect.family in BRIDGED_FAMILIES:
            body = dialect.render(conv)
            if conv.stream:  # usage before the first byte, as llama-server's own endpoints do
                body["timings_per_token"] = True
            query = raw_path.partition("?")[2]  # Claude Code's ?beta=true goes along
            return UpstreamCall("/v1/chat/completions" + (f"?{query}" if query else ""), body,
                                VIA_CHAT)  # fmt: skip
        return UpstreamCall(raw_path, dialect.render(conv))

    def prepare(self, call: UpstreamCall, dialect: DialectBase, where: Placement,
                keep: KeepPolicy) -> Prepared:  # fmt: skip
        body = {**call.body, "id_slot": where.slot, "cache_prompt": not where.isolated}
        return Prepared(body)


class Ollama:
    """ollama: an OpenAI chat request goes to its ``/api/chat``; every body of its own API
    keeps the model's context and stays loaded (``ollama_keep``)."""

    kind = "ollama"
    label = "ollama"
    pins = False
    state_path = "/api/ps"
    answers_ollama_reads = False  # its own
    tokenizes = False  # no tokenizer endpoints: estimates

    def lost_cache(self, answer: Any) -> bool:
        """``/api/ps`` with no model loaded: an unload or a restart."""
        return isinstance(answer, dict) and not answer.get("models")

    def slot_count(self, props: Mapping[str, Any]) -> int:
        return 1  # one context per loaded model

    async def learn_context(self, upstream: Upstream, memory: ContextMemory,
                            fixed: int) -> None:  # fmt: skip
        """The context each loaded model runs at (``ollama_keep``), so that kvproxy keeps
        sending it; a failing ``/api/ps`` leaves it to the first request."""
        memory.fixed = fixed
        with contextlib.suppress(ProxyError):
            memory.learn_loaded(await upstream.get_json("/api/ps"))

    def call(self, dialect: DialectBase, conv: Conversation, raw_path: str) -> UpstreamCall:
        if dialect.name == "openai_chat":
            return UpstreamCall("/api/chat", openai_bridge.chat_request(conv), OPENAI_ON_OLLAMA)
        if dialect.family in BRIDGED_FAMILIES:
            return UpstreamCall("/api/chat", openai_bridge.chat_request(conv), VIA_OLLAMA_CHAT)
        return UpstreamCall(raw_path, dialect.render(conv))

    def prepare(self, call: UpstreamCall, dialect: DialectBase, where: Placement,
                keep: KeepPolicy) -> Prepared:  # fmt: skip
        if dialect.family != "ollama" and call.how not in (OPENAI_ON_OLLAMA, VIA_OLLAMA_CHAT):
            return Prepared(call.body)
        kept = ollama_keep.keep(call.body, keep, where.ollama_ctx,
                                ollama_keep.prompt_chars(call.body))  # fmt: skip
        pairs = (("num_ctx", kept.num_ctx_replaced), ("keep_alive", kept.keep_alive_replaced))
        replaced = {k: v for k, v in pairs if v is not None}
        return Prepared(kept.body, replaced or None)


KINDS: dict[str, Backend] = {"llama": LlamaServer(), "ollama": Ollama()}


def backend_for(kind: str) -> Backend:
    return KINDS[kind]
