"""What a server kind is to kvproxy: the ``Backend`` protocol, and the values a request's
call to it is described by (the path and body, where it was placed, what was replaced)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from proxy.backends.ollama_keep import ContextMemory, KeepPolicy
from proxy.backends.upstream import Upstream
from proxy.core.conversation import Conversation
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
    drops_streams: bool  # closes a streamed answer's connection: streams get their own

    def lost_cache(self, answer: Any) -> bool: ...

    def slot_count(self, props: Mapping[str, Any]) -> int: ...

    async def learn_context(self, upstream: Upstream, memory: ContextMemory,
                            fixed: int) -> None: ...  # fmt: skip

    def call(self, dialect: DialectBase, conv: Conversation, raw_path: str) -> UpstreamCall: ...

    def prepare(self, call: UpstreamCall, dialect: DialectBase, where: Placement,
                keep: KeepPolicy) -> Prepared: ...  # fmt: skip
