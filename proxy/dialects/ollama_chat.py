"""ollama ``POST /api/chat``: NDJSON streaming, on by default."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxy.core.conversation import Conversation, MessageMemo, frozen_map
from proxy.core.errors import ProxyError
from proxy.dialects.base import (
    DialectBase,
    optional_bool,
    optional_str,
    parse_messages,
    parse_tools,
    render_envelope,
    render_message,
    require_object,
)
from proxy.dialects.ollama_options import ollama_fields, render_ollama_fields

STRUCTURAL = ("model", "messages", "tools", "stream", "options", "format")


@dataclass(frozen=True)
class OllamaChat(DialectBase):
    name: str = "ollama_chat"
    family: str = "ollama"
    framing: str = "ndjson"
    path: str = "/api/chat"

    def parse(self, body: Any, memo: MessageMemo | None = None) -> Conversation:
        body = require_object(body)
        params, extra = ollama_fields(body, STRUCTURAL)
        return Conversation(
            kind="chat",
            model=optional_str(body, "model"),
            messages=parse_messages(body, memo),
            tools=parse_tools(body),
            stream=optional_bool(body, "stream", True),
            params=frozen_map(params),
            extra=frozen_map(extra),
        )

    def render(self, conv: Conversation) -> dict[str, Any]:
        messages = [render_message(m) for m in conv.messages]
        return {
            **render_envelope(conv, messages=messages),
            **render_ollama_fields(conv.params, conv.extra),
        }

    def error_body(self, err: ProxyError) -> dict[str, Any]:
        return {"error": err.message}


DIALECT = OllamaChat()
