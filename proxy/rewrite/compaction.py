"""Compaction summaries: recognise a request whose history the client replaced by a summary.

Built-in shapes for the clients people use (observed on the real clients: docs/clients.md), then a
generic detector: the request is shorter than the previous one of its lineage and carries a
new message before its newest user turn.
"""

from __future__ import annotations

from collections.abc import Sequence

from proxy.core.conversation import Message

# (client, role or None for any, text marker, where: "start" or "in")
SHAPES: tuple[tuple[str, str | None, str, str], ...] = (
    ("openclaw", "user",
     "The conversation history before this point was compacted into the following summary:",
     "start"),
    ("hermes", None, "[CONTEXT COMPACTION", "in"),
    ("codex", "user", "Another language model started to solve this problem", "start"),
    # Claude Code folds the summary into the first user message, after a reminder block
    ("claude-code", "user", "This session is being continued from a previous conversation",
     "in"),
)  # fmt: skip
GENERIC_MIN_CHARS = 200


def shape_of(message: Message) -> str | None:
    text = message.text()
    for client, role, marker, where in SHAPES:
        if role is not None and message.role != role:
            continue
        if text.startswith(marker) if where == "start" else marker in text:
            return client
    return None


def last_user(messages: Sequence[Message]) -> int:
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].role == "user":
            return i
    return len(messages)


def new_in_order(previous: Sequence[str], current: Sequence[str]) -> list[bool]:
    """Which of the current messages are new: the others match the previous request's
    messages in order (a kept head and a kept tail), each previous message at most once, so
    a repeated reply is still new where it is not kept history."""
    out, at = [], 0
    for h in current:
        try:
            found = previous.index(h, at)
        except ValueError:
            out.append(True)
            continue
        out.append(False)
        at = found + 1
    return out


def find_summary(
    messages: Sequence[Message], is_new: Sequence[bool], shorter: bool
) -> tuple[int, str] | None:
    """(index, shape) of the summary among the request's new messages, if it is compacted."""
    for i, message in enumerate(messages):
        if is_new[i] and (shape := shape_of(message)) is not None:
            return i, shape
    if not shorter:
        return None
    newest = last_user(messages)
    for i in range(newest):
        long_new = is_new[i] and len(messages[i].text()) >= GENERIC_MIN_CHARS
        if long_new and messages[i].role in ("user", "assistant", "system"):
            return i, "generic"
    return None


def append_order(new: Sequence[Message], summary: Message, tail: int = 0) -> list[Message]:
    """New messages with the summary placed right before the newest user turn (before a
    transient ``tail`` of that many messages, which stays last): what the slot holds (the
    previous reply first) stays a prefix."""
    core = list(new[: len(new) - tail])
    newest = last_user(core)
    return [*core[:newest], summary, *core[newest:], *new[len(core) :]]
