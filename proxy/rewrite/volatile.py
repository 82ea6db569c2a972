"""Volatile system content: the lines of a system message that change between requests of
one lineage (learned by diffing consecutive versions) or that match operator patterns.

The stable remainder stays as the slot holds it; the volatile text goes to the newest user
turn inside a ``<context-update>`` block, so the prompt only grows at its end.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from proxy.conversation import Message

BLOCK_OPEN = '<context-update source="system">'
BLOCK_CLOSE = "</context-update>"
FIRST_USER_OPEN = '<context-update source="first user message">'
# A change larger than this share of the system message is a new system prompt, not a
# volatile part of the old one.
MAX_VOLATILE_SHARE = 0.5


def changed_lines(old: str, new: str) -> tuple[str, str] | None:
    """(old middle, new middle): the lines between the common leading and trailing lines;
    None when the texts are equal."""
    if old == new:
        return None
    a, b = old.splitlines(keepends=True), new.splitlines(keepends=True)
    head = 0
    while head < min(len(a), len(b)) and a[head] == b[head]:
        head += 1
    tail = 0
    while tail < min(len(a), len(b)) - head and a[-1 - tail] == b[-1 - tail]:
        tail += 1
    return "".join(a[head : len(a) - tail]), "".join(b[head : len(b) - tail])


def is_volatile_change(new_system: str, new_middle: str) -> bool:
    return len(new_middle) <= MAX_VOLATILE_SHARE * max(1, len(new_system))


def marker_split(text: str, patterns: Sequence[re.Pattern[str]]) -> tuple[str, str]:
    """(text without the pattern matches, the matches joined by newlines)."""
    found: list[str] = []
    for pattern in patterns:
        found.extend(m.group(0) for m in pattern.finditer(text))
        text = pattern.sub("", text)
    return text, "\n".join(found)


def context_block(volatile: str, opening: str = BLOCK_OPEN) -> str:
    return f"\n\n{opening}\n{volatile.strip(chr(10))}\n{BLOCK_CLOSE}"


def with_block(message: Message, block: str) -> Message:
    """The message with the block appended to its text (a new text part for part lists)."""
    content: Any = message.content
    if isinstance(content, str) or content is None:
        return replace(message, content=(content or "") + block)
    if isinstance(content, list | tuple):
        part: Mapping[str, Any] = {"type": "text", "text": block.lstrip("\n")}
        return replace(message, content=[*content, part])
    return message
