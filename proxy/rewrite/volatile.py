"""Volatile content: the lines of a system message (or of the first user message) that
change between requests, found by a line diff, by operator patterns, or by a template
learned from earlier conversations with the same stable text.

The model keeps seeing the text the slot holds; what changed goes to the newest user turn
inside delimited blocks, so the prompt only grows at its end. Pure functions and one
bounded, in-memory learner; nothing here performs I/O.
"""

from __future__ import annotations

import difflib
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from proxy.core.conversation import Message

BLOCK_OPEN = '<context-update source="system">'
BLOCK_CLOSE = "</context-update>"
FIRST_USER_OPEN = '<context-update source="first user message">'
# A context message after the first one (``lineage.context_indices``), by its role.
CONTEXT_OPENS = {role: f'<context-update source="{role} message">'
                 for role in ("system", "developer")}  # fmt: skip
REMOVED_OPEN = '<context-removed source="system">'
REMOVED_CLOSE = "</context-removed>"
DELIMITERS = frozenset(
    {BLOCK_OPEN, BLOCK_CLOSE, FIRST_USER_OPEN, REMOVED_OPEN, REMOVED_CLOSE, *CONTEXT_OPENS.values()}
)
# A change larger than this share of the text is a new text, not a volatile part of the old.
MAX_VOLATILE_SHARE = 0.5
MAX_TEMPLATES = 32
MAX_RECENT = 32


def split_lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def key(line: str) -> str:
    return line.rstrip("\r\n")


@dataclass(frozen=True)
class LineDiff:
    """How ``new`` differs from ``base`` by whole lines: lines of ``new`` that are inserted
    or replace others (``added``, in order), lines of ``base`` deleted with nothing in
    their place (``removed``), and the lines of ``new`` matched to ``base`` (``kept``)."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()
    replaced: tuple[str, ...] = ()  # lines of base that a changed line stands for

    @property
    def equal(self) -> bool:
        return not self.added and not self.removed and not self.replaced

    def small(self, new_len: int, base_len: int) -> bool:
        added = sum(map(len, self.added))
        gone = sum(map(len, self.removed)) + sum(map(len, self.replaced))
        return added <= MAX_VOLATILE_SHARE * max(1, new_len) and gone <= MAX_VOLATILE_SHARE * max(
            1, base_len
        )


def diff_lines(base: Sequence[str], new: Sequence[str]) -> LineDiff:
    matcher = difflib.SequenceMatcher(None, [key(x) for x in base], [key(x) for x in new],
                                      autojunk=False)  # fmt: skip
    added: list[str] = []
    removed: list[str] = []
    kept: list[str] = []
    replaced: list[str] = []
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            kept.extend(new[j1:j2])
        elif op == "insert":
            added.extend(new[j1:j2])
        elif op == "delete":
            removed.extend(base[i1:i2])
        else:
            added.extend(new[j1:j2])
            replaced.extend(base[i1:i2])
    return LineDiff(tuple(added), tuple(removed), tuple(kept), tuple(replaced))


def changed_lines(old: str, new: str) -> tuple[str, str] | None:
    """(old lines, new lines) that differ; None when the texts are equal."""
    if old == new:
        return None
    diff = diff_lines(split_lines(old), split_lines(new))
    return "".join(diff.removed + diff.replaced), "".join(diff.added)


def is_volatile_change(new_text: str, new_part: str) -> bool:
    return len(new_part) <= MAX_VOLATILE_SHARE * max(1, len(new_text))


def marker_split(text: str, patterns: Sequence[re.Pattern[str]]) -> tuple[str, str]:
    """(text without the lines a pattern touches, those lines): a line moves whole, so that
    every line the model sees is a line the client sent."""
    if not patterns:
        return text, ""
    lines = split_lines(text)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    touched: set[int] = set()
    for pattern in patterns:
        for found in pattern.finditer(text):
            first = max(0, bisect(starts, found.start()))
            last = max(first, bisect(starts, max(found.start(), found.end() - 1)))
            touched.update(range(first, last + 1))
    if not touched:
        return text, ""
    stable = "".join(line for i, line in enumerate(lines) if i not in touched)
    moved = "".join(line for i, line in enumerate(lines) if i in touched)
    return stable, moved


def bisect(starts: Sequence[int], offset: int) -> int:
    """The index of the line holding ``offset``."""
    lo, hi = 0, len(starts) - 1
    while lo < hi - 1:
        mid = (lo + hi) // 2
        if starts[mid] <= offset:
            lo = mid
        else:
            hi = mid
    return lo


def context_block(added: str, removed: str = "", opening: str = BLOCK_OPEN) -> str:
    """The block appended to the newest user turn: current values, then (only for lines
    deleted outright) what no longer applies."""
    out = ""
    if added.strip("\n"):
        out += f"\n\n{opening}\n{added.strip(chr(10))}\n{BLOCK_CLOSE}"
    if removed.strip("\n"):
        out += f"\n\n{REMOVED_OPEN}\n{removed.strip(chr(10))}\n{REMOVED_CLOSE}"
    return out


def line_text(message: Message) -> str:
    """A message's text with one line break between text parts (a part boundary is a line
    boundary, as the contract check counts lines)."""
    content = message.content
    if isinstance(content, list | tuple):
        return "\n".join(
            p["text"]
            for p in content
            if isinstance(p, Mapping) and p.get("type") == "text" and isinstance(p.get("text"), str)
        )
    return content if isinstance(content, str) else ""


def with_block(message: Message, block: str) -> Message:
    """The message with the block appended to its text (a new text part for part lists)."""
    content: Any = message.content
    if isinstance(content, str) or content is None:
        return replace(message, content=(content or "") + block)
    if isinstance(content, list | tuple):
        part: Mapping[str, Any] = {"type": "text", "text": block.lstrip("\n")}
        return replace(message, content=[*content, part])
    return message


@dataclass(frozen=True)
class SystemSplit:
    """A system message cut into what goes upstream as the system message (``stable``) and
    the lines that go to the newest user turn (``added``, ``removed``)."""

    stable: str
    added: str = ""
    removed: str = ""

    @property
    def told(self) -> str:
        """What the model is told beside the stable text; empty when nothing is."""
        return self.added + "\x00" + self.removed if self.added or self.removed else ""


def split_against(
    base: str, system: str, patterns: Sequence[re.Pattern[str]]
) -> SystemSplit | None:
    """The client's current system text against the system text the slot holds (``base``):
    lines matched to it stay as sent, the rest is volatile. None when the change is too
    large to be a volatile part (a new system prompt)."""
    rest, marked = marker_split(system, patterns)
    base_rest, _ = marker_split(base, patterns)
    diff = diff_lines(split_lines(base_rest), split_lines(rest))
    if not diff.small(len(rest), len(base_rest)):
        return None
    return SystemSplit(base, marked + "".join(diff.added), "".join(diff.removed))


class Templates:
    """System texts seen at the start of conversations, and the stable lines learned from
    pairs of them that differ in a small part (a date, a customer line): a later
    conversation with the same stable lines has its volatile lines moved out from its first
    turn. What is learned is which lines stay; the lines moved are always the request's own.
    ``lookup`` only reads; ``learn`` (at commit) remembers."""

    def __init__(self, max_templates: int = MAX_TEMPLATES, max_recent: int = MAX_RECENT) -> None:
        self.max_templates = max_templates
        self.max_recent = max_recent
        self.stable: OrderedDict[tuple[str, ...], None] = OrderedDict()
        self.recent: OrderedDict[str, None] = OrderedDict()

    def lookup(self, system: str) -> tuple[SystemSplit, tuple[str, ...]] | None:
        """The split of a first-turn system text (pattern lines already removed) by a
        learned template, or by a template learnable from a text seen before."""
        lines = split_lines(system)
        keys = [key(x) for x in lines]
        for stable in reversed(self.stable):
            if not plausible(stable, keys):
                continue
            diff = diff_lines(list(stable), keys)
            only_added = not diff.removed and not diff.replaced and diff.added
            if only_added and diff.small(len(system), len(system)):
                return from_keys(lines, stable), stable
        for seen in reversed(self.recent):
            if seen == system:
                continue
            seen_keys = [key(x) for x in split_lines(seen)]
            if not plausible(seen_keys, keys):
                continue
            diff = diff_lines(seen_keys, keys)
            if diff.kept and diff.small(len(system), len(seen)):
                stable = tuple(key(x) for x in diff.kept)
                return from_keys(lines, stable), stable
        return None

    def learn(self, system: str, stable: tuple[str, ...] | None) -> None:
        self.recent[system] = None
        self.recent.move_to_end(system)
        while len(self.recent) > self.max_recent:
            self.recent.popitem(last=False)
        if stable:
            self.stable[stable] = None
            self.stable.move_to_end(stable)
            while len(self.stable) > self.max_templates:
                self.stable.popitem(last=False)


def plausible(a: Sequence[str], b: Sequence[str]) -> bool:
    """A cheap filter before a diff: same first or last line, comparable length."""
    if not a or not b or not (a[0] == b[0] or a[-1] == b[-1]):
        return False
    return len(a) <= 2 * len(b) + 2 and len(b) <= 2 * len(a) + 2


def from_keys(lines: Sequence[str], stable: Sequence[str]) -> SystemSplit:
    """The request's own lines, split into those matching the stable keys and the rest."""
    matcher = difflib.SequenceMatcher(None, list(stable), [key(x) for x in lines], autojunk=False)
    kept_idx: set[int] = set()
    for op, _i1, _i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            kept_idx.update(range(j1, j2))
    kept = "".join(x for i, x in enumerate(lines) if i in kept_idx)
    added = "".join(x for i, x in enumerate(lines) if i not in kept_idx)
    return SystemSplit(kept, added)
