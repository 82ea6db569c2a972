"""ollama as a backend: an OpenAI chat or agent-protocol request goes to its ``/api/chat``;
every body of its own API keeps the model's context and stays loaded (``ollama_keep``)."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from proxy.backends import ollama_keep, openai_bridge
from proxy.backends.base import (
    BRIDGED_FAMILIES,
    OPENAI_ON_OLLAMA,
    VIA_OLLAMA_CHAT,
    Placement,
    Prepared,
    UpstreamCall,
)
from proxy.backends.ollama_keep import ContextMemory, KeepPolicy
from proxy.backends.upstream import Upstream
from proxy.core.conversation import Conversation
from proxy.core.errors import ProxyError
from proxy.dialects.base import DialectBase


class Ollama:
    """ollama: an OpenAI chat request goes to its ``/api/chat``; every body of its own API
    keeps the model's context and stays loaded (``ollama_keep``)."""

    kind = "ollama"
    label = "ollama"
    pins = False
    state_path = "/api/ps"
    answers_ollama_reads = False  # its own
    tokenizes = False  # no tokenizer endpoints: estimates
    drops_streams = False  # Go's net/http keeps a finished stream's connection alive

    def lost_cache(self, answer: Any) -> bool:
        """``/api/ps`` with no model loaded: an unload or a restart."""
        return isinstance(answer, dict) and not answer.get("models")

    def slot_count(self, props: Mapping[str, Any]) -> int:
        return 1  # one context per loaded model

    async def learn_context(self, upstream: Upstream, memory: ContextMemory,
                            fixed: int) -> None:  # fmt: skip
        """The context each loaded model runs at (``ollama_keep``), so that kvproxy keeps
        sending it; a failing ``/api/ps`` leaves it to the first request."""
        memory.fixed = fixed
        with contextlib.suppress(ProxyError):
            memory.learn_loaded(await upstream.get_json("/api/ps"))

    def call(self, dialect: DialectBase, conv: Conversation, raw_path: str) -> UpstreamCall:
        if dialect.name == "openai_chat":
            return UpstreamCall("/api/chat", openai_bridge.chat_request(conv), OPENAI_ON_OLLAMA)
        if dialect.family in BRIDGED_FAMILIES:
            return UpstreamCall("/api/chat", openai_bridge.chat_request(conv), VIA_OLLAMA_CHAT)
        return UpstreamCall(raw_path, dialect.render(conv))

    def prepare(self, call: UpstreamCall, dialect: DialectBase, where: Placement,
                keep: KeepPolicy) -> Prepared:  # fmt: skip
        if dialect.family != "ollama" and call.how not in (OPENAI_ON_OLLAMA, VIA_OLLAMA_CHAT):
            return Prepared(call.body)
        kept = ollama_keep.keep(call.body, keep, where.ollama_ctx,
                                ollama_keep.prompt_chars(call.body))  # fmt: skip
        pairs = (("num_ctx", kept.num_ctx_replaced), ("keep_alive", kept.keep_alive_replaced))
        replaced = {k: v for k, v in pairs if v is not None}
        return Prepared(kept.body, replaced or None)
