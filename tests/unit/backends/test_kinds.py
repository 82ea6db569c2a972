"""What each server kind does with each dialect: one table, read as a table."""

from __future__ import annotations

import pytest

from proxy.backends.kinds import (
    KINDS,
    NATIVE,
    OLLAMA_ON_LLAMA,
    OPENAI_ON_OLLAMA,
    VIA_CHAT,
    VIA_OLLAMA_CHAT,
    Placement,
)
from proxy.backends.ollama_keep import KeepPolicy
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


@pytest.mark.parametrize(("isolated", "cache_prompt"), [(False, True), (True, False)])
def test_llama_server_pins_and_reuses_only_the_principals(isolated: bool,
                                                          cache_prompt: bool) -> None:  # fmt: skip
    dialect = REGISTRY["/v1/chat/completions"]
    backend = KINDS["llama"]
    prepared = backend.prepare(backend.call(dialect, CONV, "/v1/chat/completions"), dialect,
                               Placement(1, isolated), KeepPolicy())  # fmt: skip
    assert prepared.body["id_slot"] == 1 and prepared.body["cache_prompt"] is cache_prompt


def test_ollama_keeps_its_context_and_says_what_it_replaced() -> None:
    dialect = REGISTRY["/api/chat"]
    backend = KINDS["ollama"]
    call = backend.call(dialect, CONV, "/api/chat")
    call = type(call)(call.path, {**call.body, "keep_alive": "1m"}, call.how)
    prepared = backend.prepare(call, dialect, Placement(0), KeepPolicy())
    assert "id_slot" not in prepared.body
    assert prepared.replaced is not None and prepared.replaced.get("keep_alive") == "1m"
