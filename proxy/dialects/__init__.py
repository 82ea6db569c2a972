"""The dialect registry: request path -> the module that translates it."""

from __future__ import annotations

from collections.abc import Mapping

from proxy.dialects import (
    anthropic_messages,
    llamacpp_completion,
    ollama_chat,
    ollama_generate,
    openai_chat,
    openai_completions,
    openai_responses,
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
    "/v1/messages": anthropic_messages.DIALECT,
    "/v1/responses": openai_responses.DIALECT,
}

__all__ = ["REGISTRY", "Dialect", "DialectBase"]
