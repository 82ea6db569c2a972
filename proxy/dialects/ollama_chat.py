"""ollama ``POST /api/chat``: NDJSON streaming, on by default."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxy.conversation import Conversation, frozen_map, thaw
from proxy.dialects.base import (
    DialectBase,
    optional_bool,
    optional_str,
    parse_messages,
    parse_tools,
    render_message,
    require_object,
)
from proxy.dialects.ollama_options import join_options, split_options
from proxy.errors import ProxyError

STRUCTURAL = ("model", "messages", "tools", "stream", "options", "format")


@dataclass(frozen=True)
class OllamaChat(DialectBase):
    name: str = "ollama_chat"
    family: str = "ollama"
    framing: str = "ndjson"
    path: str = "/api/chat"

    def parse(self, body: Any) -> Conversation:
        body = require_object(body)
        params, other_options = split_options(body)
        extra = {k: v for k, v in body.items() if k not in STRUCTURAL}
        if other_options:
            extra["options"] = other_options
        return Conversation(
            kind="chat",
            model=optional_str(body, "model"),
            messages=parse_messages(body),
            tools=parse_tools(body),
            stream=optional_bool(body, "stream", True),
            params=frozen_map(params),
            extra=frozen_map(extra),
        )

    def render(self, conv: Conversation) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if conv.model is not None:
            out["model"] = conv.model
        out["messages"] = [render_message(m) for m in conv.messages]
        if conv.tools is not None:
            out["tools"] = thaw(conv.tools)
        out["stream"] = conv.stream
        extra = thaw(conv.extra)
        out.update(join_options(conv.params, extra.pop("options", {})))
        out.update(extra)
        return out

    def error_body(self, err: ProxyError) -> dict[str, Any]:
        return {"error": err.message}


DIALECT = OllamaChat()
