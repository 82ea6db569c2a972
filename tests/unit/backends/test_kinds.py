"""What each server kind does with each dialect: one table, read as a table."""

from __future__ import annotations

import pytest

from proxy.backends.base import (
    NATIVE,
    OLLAMA_ON_LLAMA,
    OPENAI_ON_OLLAMA,
    VIA_CHAT,
    VIA_OLLAMA_CHAT,
)
from proxy.backends.kinds import KINDS
from proxy.core.conversation import Conversation, Message
from proxy.dialects import REGISTRY

CONV = Conversation(kind="chat", model="m", messages=(Message.make("user", "hi"),))


@pytest.mark.parametrize(
    ("kind", "path", "upstream_path", "how"),
    [
        ("llama", "/v1/chat/completions", "/v1/chat/completions", NATIVE),
        ("llama", "/api/chat", "/v1/chat/completions", OLLAMA_ON_LLAMA),
        ("ollama", "/v1/chat/completions", "/api/chat", OPENAI_ON_OLLAMA),
        ("ollama", "/api/chat", "/api/chat", NATIVE),
        # llama-server's own /v1/messages drops id_slot and cache_prompt: its chat endpoint
        ("llama", "/v1/messages?beta=true", "/v1/chat/completions?beta=true", VIA_CHAT),
        ("llama", "/v1/responses", "/v1/chat/completions", VIA_CHAT),
        ("ollama", "/v1/messages?beta=true", "/api/chat", VIA_OLLAMA_CHAT),
        ("ollama", "/v1/responses", "/api/chat", VIA_OLLAMA_CHAT),
    ],
)
def test_the_call_for_each_kind_and_dialect(kind: str, path: str, upstream_path: str,
                                            how: str) -> None:  # fmt: skip
    call = KINDS[kind].call(REGISTRY[path.partition("?")[0]], CONV, path)
    assert (call.path, call.how) == (upstream_path, how)
