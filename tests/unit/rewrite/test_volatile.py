"""Volatile parts of a system text, by whole lines (pure): what changed, what moves to the
newest turn, and the templates learned from first turns."""

from __future__ import annotations

import re

import pytest

from proxy.core.conversation import Message
from proxy.rewrite.volatile import (
    BLOCK_CLOSE,
    BLOCK_OPEN,
    REMOVED_CLOSE,
    REMOVED_OPEN,
    Templates,
    bisect,
    changed_lines,
    context_block,
    diff_lines,
    line_text,
    marker_split,
    split_against,
    with_block,
)

SYSTEM = "You are an agent.\nFollow the rules.\nCurrent date: 2026-11-21\nBe brief.\n"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [("a\nb\nc\n", "a\nX\nc\n", ("b\n", "X\n")), ("a\n", "a\n", None),
     ("a\nb\n", "a\nb\nnote\n", ("", "note\n"))],
)  # fmt: skip
def test_changed_lines(old: str, new: str, expected: tuple[str, str] | None) -> None:
    assert changed_lines(old, new) == expected


@pytest.mark.parametrize(
    ("base", "new", "added", "removed", "replaced"),
    [(["a\n", "b\n"], ["a\n", "b\n"], (), (), ()),
     (["a\n", "b\n"], ["a\n", "X\n", "b\n"], ("X\n",), (), ()),
     (["a\n", "b\n", "c\n"], ["a\n", "c\n"], (), ("b\n",), ()),
     (["a\n", "b\n"], ["a\n", "B\n"], ("B\n",), (), ("b\n",)),
     (["a\r\n"], ["a\n"], (), (), ())],  # line ends do not count
)  # fmt: skip
def test_diff_lines(base: list[str], new: list[str], added: tuple[str, ...],
                    removed: tuple[str, ...], replaced: tuple[str, ...]) -> None:  # fmt: skip
    diff = diff_lines(base, new)
    assert (diff.added, diff.removed, diff.replaced) == (added, removed, replaced)
    assert diff.equal is (not added and not removed and not replaced)


@pytest.mark.parametrize(
    ("base", "system", "expected"),
    [(SYSTEM, SYSTEM, (SYSTEM, "", "")),
     (SYSTEM, SYSTEM.replace("21", "22"), (SYSTEM, "Current date: 2026-11-22\n", "")),
     (SYSTEM, SYSTEM.replace("Be brief.\n", ""), (SYSTEM, "", "Be brief.\n")),
     (SYSTEM, "Totally different.\n", None)],  # a new system prompt, not a volatile part
)  # fmt: skip
def test_split_against(base: str, system: str, expected: tuple[str, str, str] | None) -> None:
    split = split_against(base, system, ())
    got = None if split is None else (split.stable, split.added, split.removed)
    assert got == expected


def test_split_against_moves_pattern_lines_whole() -> None:
    patterns = (re.compile(r"RAG \w+"),)
    split = split_against("Rules.\nRAG one\nEnd.\n", "Rules.\nsee RAG two\nEnd.\n", patterns)
    assert split is not None and split.added == "see RAG two\n" and split.removed == ""
    assert split.told == "see RAG two\n\x00"


@pytest.mark.parametrize(
    ("text", "pattern", "expected"),
    [("a\nb\nc\n", r"b", ("a\nc\n", "b\n")), ("a\nb\nc\n", r"z", ("a\nb\nc\n", "")),
     ("a\nb1\nb2\nc\n", r"b1\nb2", ("a\nc\n", "b1\nb2\n")), ("a\nb", r"b$", ("a\n", "b"))],
)  # fmt: skip
def test_marker_split_moves_every_line_a_pattern_touches(
    text: str, pattern: str, expected: tuple[str, str]
) -> None:
    assert marker_split(text, (re.compile(pattern),)) == expected
    assert marker_split(text, ()) == (text, "")


@pytest.mark.parametrize(("offset", "line"), [(0, 0), (1, 0), (2, 1), (5, 2), (99, 2)])
def test_bisect_finds_the_line_of_an_offset(offset: int, line: int) -> None:
    assert bisect([0, 2, 5, 9], offset) == line


@pytest.mark.parametrize(
    ("added", "removed", "expected"),
    [("x\n", "", f"\n\n{BLOCK_OPEN}\nx\n{BLOCK_CLOSE}"),
     ("", "y\n", f"\n\n{REMOVED_OPEN}\ny\n{REMOVED_CLOSE}"),
     ("\n", "\n", "")],
)  # fmt: skip
def test_context_block(added: str, removed: str, expected: str) -> None:
    assert context_block(added, removed) == expected


def test_a_block_joins_text_or_becomes_a_new_part() -> None:
    assert with_block(Message.make("user", "q"), "\n\nB").content == "q\n\nB"
    assert with_block(Message.make("user", None), "\n\nB").content == "\n\nB"
    parts = with_block(Message.make("user", [{"type": "text", "text": "q"}]), "\n\nB")
    assert [dict(p) for p in parts.content] == [{"type": "text", "text": "q"},
                                                {"type": "text", "text": "B"}]  # fmt: skip
    assert line_text(parts) == "q\nB"


def test_templates_learn_the_stable_lines_of_two_first_turns() -> None:
    templates = Templates()
    assert templates.lookup(SYSTEM) is None
    templates.learn(SYSTEM, None)
    other = SYSTEM.replace("21", "22")
    found = templates.lookup(other)
    assert found is not None
    split, stable = found
    assert split.added == "Current date: 2026-11-22\n" and "Be brief." in stable
    templates.learn(other, stable)
    third = templates.lookup(SYSTEM.replace("21", "23"))
    assert third is not None and third[0].added == "Current date: 2026-11-23\n"


def test_templates_are_bounded() -> None:
    templates = Templates(max_templates=2, max_recent=2)
    for i in range(5):
        templates.learn(f"text {i}\n", (f"line {i}",))
    assert list(templates.recent) == ["text 3\n", "text 4\n"]
    assert list(templates.stable) == [("line 3",), ("line 4",)]
