"""OpenAI ``POST /v1/completions``: a raw prompt, no chat template."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxy.core.conversation import Conversation, MessageMemo, frozen_map, thaw
from proxy.dialects.base import (
    DialectBase,
    optional_bool,
    optional_str,
    render_envelope,
    require_object,
    require_prompt,
    unknown_fields,
)

STRUCTURAL = ("model", "prompt", "stream")


@dataclass(frozen=True)
class OpenAICompletions(DialectBase):
    name: str = "openai_completions"
    family: str = "openai"
    framing: str = "sse"
    path: str = "/v1/completions"

    def parse(self, body: Any, memo: MessageMemo | None = None) -> Conversation:
        body = require_object(body)
        return Conversation(
            kind="completion",
            model=optional_str(body, "model"),
            prompt=require_prompt(body),
            stream=optional_bool(body, "stream", False),
            params=frozen_map(unknown_fields(body, STRUCTURAL)),
        )

    def render(self, conv: Conversation) -> dict[str, Any]:
        return {**render_envelope(conv, prompt=thaw(conv.prompt)), **thaw(conv.params)}


DIALECT = OpenAICompletions()
