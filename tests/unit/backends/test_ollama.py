"""ollama as a backend: one stable context, kept loaded, whatever the dialect."""

from __future__ import annotations

from proxy.backends.base import Placement
from proxy.backends.kinds import KINDS
from proxy.backends.ollama_keep import KeepPolicy
from proxy.core.conversation import Conversation, Message
from proxy.dialects import REGISTRY

CONV = Conversation(kind="chat", model="m", messages=(Message.make("user", "hi"),))


def test_ollama_keeps_its_context_and_says_what_it_replaced() -> None:
    dialect = REGISTRY["/api/chat"]
    backend = KINDS["ollama"]
    call = backend.call(dialect, CONV, "/api/chat")
    call = type(call)(call.path, {**call.body, "keep_alive": "1m"}, call.how)
    prepared = backend.prepare(call, dialect, Placement(0), KeepPolicy())
    assert "id_slot" not in prepared.body
    assert prepared.replaced is not None and prepared.replaced.get("keep_alive") == "1m"


def test_the_agent_protocols_keep_ollamas_one_context_too() -> None:
    backend = KINDS["ollama"]
    for path in ("/v1/messages", "/v1/responses"):
        call = backend.call(REGISTRY[path], CONV, path)
        prepared = backend.prepare(call, REGISTRY[path], Placement(0), KeepPolicy())
        assert call.path == "/api/chat" and prepared.body["keep_alive"] == "30m"
