"""What the agent protocols (Anthropic Messages, OpenAI Responses) share: they are converted
to the canonical chat conversation as llama-server converts them and go upstream as a chat
body; their answers are chat chunks turned into typed server-sent events by each dialect's
responder."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from proxy.core.conversation import Conversation
from proxy.core.errors import ProxyError
from proxy.dialects.base import DialectBase
from proxy.dialects.openai_chat import DIALECT as CHAT


class Responder(Protocol):
    """Chat chunks in, the client's events out (sans-IO)."""

    def on_chunk(self, chunk: dict[str, Any]) -> list[dict[str, Any]]: ...

    def closing(self) -> list[dict[str, Any]]: ...

    def whole(self, answer: dict[str, Any]) -> dict[str, Any]: ...


@dataclass(frozen=True)
class ChatBridged(DialectBase):
    """A dialect whose requests go upstream as chat and whose answers come back as typed
    events (``responder``)."""

    def render(self, conv: Conversation) -> dict[str, Any]:
        """The chat body llama-server's own conversion would make of the request."""
        return CHAT.render(conv)

    def stream_error(self, err: ProxyError) -> bytes:
        return typed_events([self.error_event(err)])[0]

    def error_event(self, err: ProxyError) -> dict[str, Any]:
        """The event that ends a stream with ``err``."""
        return self.error_body(err)

    def responder(self, conv: Conversation) -> Responder:
        raise NotImplementedError


def typed_events(objects: list[dict[str, Any]]) -> list[bytes]:
    """Server-sent events named by their ``type`` (Anthropic's and Responses' framing)."""
    return [f"event: {o.get('type', 'message')}\ndata: ".encode()
            + json.dumps(o, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"
            for o in objects]  # fmt: skip


def chat_usage(chunk: Mapping[str, Any]) -> tuple[int, int, int] | None:
    """(prompt, cached, generated) from a chat chunk's ``timings`` or ``usage``."""
    timings, usage = chunk.get("timings"), chunk.get("usage")
    if isinstance(timings, Mapping) and isinstance(timings.get("prompt_n"), int):
        cached = int(timings.get("cache_n") or 0)
        return timings["prompt_n"] + cached, cached, int(timings.get("predicted_n") or 0)
    if isinstance(usage, Mapping) and isinstance(usage.get("prompt_tokens"), int):
        details = usage.get("prompt_tokens_details") or {}
        cached = int(details.get("cached_tokens") or 0) if isinstance(details, Mapping) else 0
        return usage["prompt_tokens"], cached, int(usage.get("completion_tokens") or 0)
    return None


def one_text(parts: list[dict[str, Any]]) -> Any:
    """A single text part as its string. llama-server renders the two alike (a part list
    is joined, a string made a part, as the template takes content), and clients turn one
    into the other between requests (Claude Code: its newest message is a block list, then
    a string): as a string, the message is the same message in both requests."""
    if len(parts) == 1 and parts[0].keys() == {"type", "text"} and parts[0]["type"] == "text":
        return parts[0]["text"]
    return parts
