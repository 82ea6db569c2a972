"""Pseudo-tokens for upstreams that cannot tokenize for kvproxy (ollama's Go templates)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import xxhash

from proxy.core.conversation import Conversation, thaw

CHARS_PER_TOKEN = 4


def estimate_tokens(parts: Sequence[str]) -> list[int]:
    """Pseudo-tokens: each part contributes about len/4 ids derived from its hash, so two
    prompts share a pseudo-prefix exactly as far as they share whole parts."""
    out: list[int] = []
    for part in parts:
        h = xxhash.xxh3_64_intdigest(part.encode("utf-8", "surrogatepass")) & 0x3FFFFFFF
        n = max(1, len(part) // CHARS_PER_TOKEN)
        out.extend((h + i) & 0x7FFFFFFF for i in range(n))
    return out


class EstimatedTokens:
    """For ollama upstreams: per-message estimates, never exact."""

    exact = False
    user_marker: tuple[int, ...] = ()

    async def prompt_tokens(self, conv: Conversation, body: dict[str, Any]) -> list[int] | None:
        if conv.kind == "chat":
            parts = [f"{m.role}\n{m.content!r}" for m in conv.messages]
            if conv.tools:
                parts.insert(0, repr(thaw(conv.tools)))
            return estimate_tokens(parts)
        if isinstance(conv.prompt, str):
            return estimate_tokens([conv.prompt])
        return None

    def text_tokens(self, text: str) -> list[int] | None:
        return estimate_tokens([f"assistant\n{text!r}"])

    async def reply_tokens(self, text: str) -> list[int] | None:
        return self.text_tokens(text)
