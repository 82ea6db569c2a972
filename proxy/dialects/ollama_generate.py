"""ollama ``POST /api/generate``: a prompt (templated unless ``raw``), NDJSON streaming."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxy.core.conversation import Conversation, MessageMemo, frozen_map
from proxy.core.errors import BadRequest
from proxy.dialects.base import (
    check_images,
    optional_bool,
    optional_str,
    render_envelope,
    require_object,
)
from proxy.dialects.ollama_chat import OllamaChat
from proxy.dialects.ollama_options import ollama_fields, render_ollama_fields

STRUCTURAL = ("model", "prompt", "stream", "options", "format")


@dataclass(frozen=True)
class OllamaGenerate(OllamaChat):
    name: str = "ollama_generate"
    path: str = "/api/generate"

    def parse(self, body: Any, memo: MessageMemo | None = None) -> Conversation:
        body = require_object(body)
        if "prompt" not in body:
            raise BadRequest("'prompt' is required")
        prompt = body["prompt"]
        if not isinstance(prompt, str):
            raise BadRequest("'prompt' must be a string")
        check_images(body.get("images"), "images")
        params, extra = ollama_fields(body, STRUCTURAL)
        return Conversation(
            kind="completion",
            model=optional_str(body, "model"),
            prompt=prompt,
            stream=optional_bool(body, "stream", True),
            params=frozen_map(params),
            extra=frozen_map(extra),
        )

    def render(self, conv: Conversation) -> dict[str, Any]:
        return {
            **render_envelope(conv, prompt=conv.prompt),
            **render_ollama_fields(conv.params, conv.extra),
        }


DIALECT = OllamaGenerate()
