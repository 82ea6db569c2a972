"""The dialect registry: request path -> the module that translates it."""

from __future__ import annotations

from collections.abc import Mapping

from proxy.dialects import (
    llamacpp_completion,
    ollama_chat,
    ollama_generate,
    openai_chat,
    openai_completions,
)
from proxy.dialects.base import Dialect, DialectBase

REGISTRY: Mapping[str, DialectBase] = {
    "/v1/chat/completions": openai_chat.DIALECT,
    "/chat/completions": openai_chat.DIALECT,
    "/v1/completions": openai_completions.DIALECT,
    "/completion": llamacpp_completion.DIALECT,
    "/completions": llamacpp_completion.DIALECT,
    "/api/chat": ollama_chat.DIALECT,
    "/api/generate": ollama_generate.DIALECT,
}

__all__ = ["REGISTRY", "Dialect", "DialectBase"]
