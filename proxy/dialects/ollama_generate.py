"""ollama ``POST /api/generate``: a prompt (templated unless ``raw``), NDJSON streaming."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxy.conversation import Conversation, frozen_map, thaw
from proxy.dialects.base import optional_bool, optional_str, require_object
from proxy.dialects.ollama_chat import OllamaChat
from proxy.dialects.ollama_options import join_options, split_options
from proxy.errors import BadRequest

STRUCTURAL = ("model", "prompt", "stream", "options", "format")


@dataclass(frozen=True)
class OllamaGenerate(OllamaChat):
    name: str = "ollama_generate"
    path: str = "/api/generate"

    def parse(self, body: Any) -> Conversation:
        body = require_object(body)
        if "prompt" not in body:
            raise BadRequest("'prompt' is required")
        prompt = body["prompt"]
        if not isinstance(prompt, str):
            raise BadRequest("'prompt' must be a string")
        params, other_options = split_options(body)
        extra = {k: v for k, v in body.items() if k not in STRUCTURAL}
        if other_options:
            extra["options"] = other_options
        return Conversation(
            kind="completion",
            model=optional_str(body, "model"),
            prompt=prompt,
            stream=optional_bool(body, "stream", True),
            params=frozen_map(params),
            extra=frozen_map(extra),
        )

    def render(self, conv: Conversation) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if conv.model is not None:
            out["model"] = conv.model
        out["prompt"] = conv.prompt
        out["stream"] = conv.stream
        extra = thaw(conv.extra)
        out.update(join_options(conv.params, extra.pop("options", {})))
        out.update(extra)
        return out


DIALECT = OllamaGenerate()
