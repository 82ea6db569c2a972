"""``kvproxy tokenize``'s pure parts: escapes as llama-tokenize reads them, and where two
token lists part."""

from __future__ import annotations

import pytest

from proxy.cli.tokenize import first_difference, process_escapes


@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        ("a\\nb", "a\nb"),
        ("a\\\\nb", "a\\nb"),
        ("a\\x41b", "aAb"),
        ("a\\qb", "a\\qb"),  # unknown escapes stay as typed
        ("a\\", "a\\"),
        ("a\\x4", "a\\x4"),  # \x needs two hex digits
        ("a\\x4g", "a\\x4g"),
        ("é\\t\\'\\\"", "é\t'\""),
    ],
)
def test_escapes_as_llama_tokenize_reads_them(typed: str, meant: str) -> None:
    assert process_escapes(typed) == meant


@pytest.mark.parametrize(
    ("a", "b", "where"),
    [([1, 2, 3], [1, 2, 3], None), ([1, 2, 3], [1, 9, 3], 1), ([1, 2], [1, 2, 3], 2),
     ([], [], None), ([5], [], 0)],
)  # fmt: skip
def test_first_difference(a: list[int], b: list[int], where: int | None) -> None:
    assert first_difference(a, b) == where
