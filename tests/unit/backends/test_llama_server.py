"""llama-server as a backend: pinned, reusing only what the principal owns."""

from __future__ import annotations

import pytest

from proxy.backends.base import Placement
from proxy.backends.kinds import KINDS
from proxy.backends.ollama_keep import KeepPolicy
from proxy.core.conversation import Conversation, Message
from proxy.dialects import REGISTRY

CONV = Conversation(kind="chat", model="m", messages=(Message.make("user", "hi"),))


@pytest.mark.parametrize(("isolated", "cache_prompt"), [(False, True), (True, False)])
def test_llama_server_pins_and_reuses_only_the_principals(isolated: bool,
                                                          cache_prompt: bool) -> None:  # fmt: skip
    dialect = REGISTRY["/v1/chat/completions"]
    backend = KINDS["llama"]
    prepared = backend.prepare(backend.call(dialect, CONV, "/v1/chat/completions"), dialect,
                               Placement(1, isolated), KeepPolicy())  # fmt: skip
    assert prepared.body["id_slot"] == 1 and prepared.body["cache_prompt"] is cache_prompt


def test_llama_server_answers_the_agent_protocols_through_its_chat_endpoint() -> None:
    """Its own /v1/messages builds a fresh body and drops id_slot and cache_prompt."""
    backend = KINDS["llama"]
    for path in ("/v1/messages", "/v1/responses"):
        call = backend.call(REGISTRY[path], CONV, path)
        prepared = backend.prepare(call, REGISTRY[path], Placement(1), KeepPolicy())
        assert call.path == "/v1/chat/completions" and prepared.body["id_slot"] == 1
