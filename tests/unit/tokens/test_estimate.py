"""Pseudo-tokens for ollama: shared prefixes exactly as far as whole messages are shared."""

from __future__ import annotations

from proxy.core.conversation import Conversation, Message
from proxy.core.prefix_index import common_prefix
from proxy.tokens.estimate import CHARS_PER_TOKEN, EstimatedTokens, estimate_tokens


def test_length_follows_characters() -> None:
    assert len(estimate_tokens(["x" * 400])) == 400 // CHARS_PER_TOKEN
    assert len(estimate_tokens(["", "ab"])) == 2  # every part counts at least one


def test_shared_parts_share_a_prefix_and_a_change_stops_it() -> None:
    a = estimate_tokens(["system " * 50, "user one"])
    b = estimate_tokens(["system " * 50, "user two"])
    assert common_prefix(a, b) == len(estimate_tokens(["system " * 50]))


async def test_messages_and_replies() -> None:
    tok = EstimatedTokens()
    conv = Conversation(kind="chat", messages=(Message("user", "hello there"),))
    first = await tok.prompt_tokens(conv, {})
    assert first and not tok.exact
    reply = tok.text_tokens("fine")
    assert reply == await tok.reply_tokens("fine")
    longer = Conversation(kind="chat", messages=(Message("user", "hello there"),
                                                 Message("assistant", "fine")))  # fmt: skip
    assert await tok.prompt_tokens(longer, {}) == [*first, *(reply or [])]
