"""llama-server as a backend: every dialect but ollama's and the agent protocols' is its
own; requests are pinned to a slot (``id_slot``) and reuse only what their principal owns."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from proxy.backends import ollama_bridge
from proxy.backends.base import (
    BRIDGED_FAMILIES,
    OLLAMA_ON_LLAMA,
    VIA_CHAT,
    Placement,
    Prepared,
    UpstreamCall,
)
from proxy.backends.ollama_keep import ContextMemory, KeepPolicy
from proxy.backends.upstream import Upstream
from proxy.core.conversation import Conversation
from proxy.dialects.base import DialectBase


class LlamaServer:
    """llama-server: every dialect but ollama's is its own; requests are pinned."""

    kind = "llama"
    label = "llama-server"
    pins = True
    state_path = "/slots"
    answers_ollama_reads = True
    tokenizes = True
    drops_streams = True  # cpp-httplib, although it advertises keep-alive

    def lost_cache(self, answer: Any) -> bool:
        """``/slots`` with every slot idle and empty: a restart. Unknown shapes are not."""
        if not isinstance(answer, list) or not answer:
            return False
        slots = [s for s in answer if isinstance(s, dict)]
        return len(slots) == len(answer) and all(
            not s.get("is_processing") and not s.get("n_prompt_tokens") and not
            (s.get("prompt") or s.get("tokens"))
            for s in slots
        )  # fmt: skip

    def slot_count(self, props: Mapping[str, Any]) -> int:
        return int(props.get("total_slots") or 1)

    async def learn_context(self, upstream: Upstream, memory: ContextMemory,
                            fixed: int) -> None:  # fmt: skip
        """llama-server's context is fixed at its start: nothing to learn."""

    def call(self, dialect: DialectBase, conv: Conversation, raw_path: str) -> UpstreamCall:
        if dialect.family == "ollama":
            endpoint = "chat" if conv.kind == "chat" else "generate"
            path, body = ollama_bridge.upstream_request(conv, endpoint)
            return UpstreamCall(path, body, OLLAMA_ON_LLAMA)
        if dialect.family in BRIDGED_FAMILIES:
            body = dialect.render(conv)
            if conv.stream:  # usage before the first byte, as llama-server's own endpoints do
                body["timings_per_token"] = True
            query = raw_path.partition("?")[2]  # Claude Code's ?beta=true goes along
            return UpstreamCall("/v1/chat/completions" + (f"?{query}" if query else ""), body,
                                VIA_CHAT)  # fmt: skip
        return UpstreamCall(raw_path, dialect.render(conv))

    def prepare(self, call: UpstreamCall, dialect: DialectBase, where: Placement,
                keep: KeepPolicy) -> Prepared:  # fmt: skip
        body = {**call.body, "id_slot": where.slot, "cache_prompt": not where.isolated}
        return Prepared(body)
