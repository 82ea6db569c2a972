"""OpenAI ``POST /v1/chat/completions`` (also spoken by llama-server and ollama)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxy.core.conversation import Conversation, MessageMemo, frozen_map, thaw
from proxy.dialects.base import (
    DialectBase,
    optional_bool,
    optional_str,
    parse_messages,
    parse_tools,
    render_envelope,
    render_message,
    require_object,
    unknown_fields,
)

STRUCTURAL = ("model", "messages", "tools", "stream")


@dataclass(frozen=True)
class OpenAIChat(DialectBase):
    name: str = "openai_chat"
    family: str = "openai"
    framing: str = "sse"
    path: str = "/v1/chat/completions"

    def parse(self, body: Any, memo: MessageMemo | None = None) -> Conversation:
        body = require_object(body)
        return Conversation(
            kind="chat",
            model=optional_str(body, "model"),
            messages=parse_messages(body, memo),
            tools=parse_tools(body),
            stream=optional_bool(body, "stream", False),
            params=frozen_map(unknown_fields(body, STRUCTURAL)),
        )

    def render(self, conv: Conversation) -> dict[str, Any]:
        messages = [render_message(m) for m in conv.messages]
        return {**render_envelope(conv, messages=messages), **thaw(conv.params)}


DIALECT = OpenAIChat()
