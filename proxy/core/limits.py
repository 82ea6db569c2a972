"""A bound on the request bytes held in memory at once, across all requests, and the
length check that spares tokenizing a prompt that cannot fit."""

from __future__ import annotations

from collections.abc import Iterable

from proxy.core.conversation import Conversation
from proxy.core.errors import Overloaded

# A request's body lives on parsed: the JSON objects, the canonical conversation, the
# upstream bodies rendered from it and the prompt's tokens. Together they are charged as
# this many times the body's bytes (a parsed JSON string costs about its UTF-8 bytes plus
# a header; tokens are bounded by the context, which ``cannot_fit`` enforces first).
PARSED_FACTOR = 4
# The most bytes of text one token covers, for any vocabulary kvproxy is likely to meet
# (llama.cpp's test vocabularies: 1,024 for the longest, command-r's and gpt-neox's runs of
# spaces; most stay under 256). Only a prompt longer than this many bytes per token of
# context is refused unseen, so a prompt that could fit is never refused on its length.
MAX_TOKEN_BYTES = 1024


class BodyBudget:
    """Bytes of request bodies being read or held by handlers. ``--max-body-bytes`` bounds
    one body; this bounds them all together (``--max-inflight-body-bytes``), so that many
    concurrent large bodies are refused with a 503 instead of exhausting memory."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.refused = 0

    def hold(self) -> BodyHold:
        return BodyHold(self)


class BodyHold:
    """One request's share of the budget, given back when the request is done."""

    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget
        self.size = 0

    def add(self, n: int) -> None:
        budget = self.budget
        if budget.used + n > budget.limit:
            budget.refused += 1
            raise Overloaded(
                f"request bodies in flight exceed --max-inflight-body-bytes ({budget.limit}); "
                "retry shortly"
            )
        budget.used += n
        self.size += n

    def charge_parsed(self) -> None:
        """Charge the parsed forms of the body read so far (``PARSED_FACTOR`` times its
        bytes in all), before it is parsed. Capped at the whole budget: a body that fits
        alone is never refused for its parsed forms while nothing else is in flight."""
        extra = min(self.size * (PARSED_FACTOR - 1), self.budget.limit - self.size)
        if extra > 0:
            self.add(extra)

    def __enter__(self) -> BodyHold:
        return self

    def release(self) -> None:
        self.budget.used -= self.size
        self.size = 0

    def __exit__(self, *exc: object) -> None:
        self.release()


def surely_prompted_bytes(conv: Conversation) -> int:
    """UTF-8 bytes of text that any rendering of ``conv`` holds: the users' messages, or a
    completion's prompt string. Not the system message, the assistant's turns or tools,
    which a chat template may drop or shorten."""
    if conv.kind == "chat":
        return sum(len(m.text().encode("utf-8", "surrogatepass")) for m in conv.messages
                   if m.role == "user")  # fmt: skip
    return len(conv.prompt.encode("utf-8", "surrogatepass")) if isinstance(conv.prompt, str) else 0


def cannot_fit(conv: Conversation, contexts: Iterable[int | None]) -> bool:
    """Whether ``conv``'s prompt is longer than every slot's context, certainly: each
    token covers at most ``MAX_TOKEN_BYTES``. False while any context is unknown."""
    sizes = list(contexts)
    if not sizes or any(n is None for n in sizes):
        return False
    return surely_prompted_bytes(conv) > max(n for n in sizes if n is not None) * MAX_TOKEN_BYTES
