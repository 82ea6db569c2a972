"""OpenAI completions: a raw prompt round-trips; a body without one is refused."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.dialects.openai_completions import DIALECT as OPENAI_COMPLETIONS
from tests.unit.dialects.cases import check_rejected, check_round_trip

ROUND_TRIPS: list[tuple[str, dict[str, Any]]] = [
    ("completions string", {"model": "m", "prompt": "Once", "max_tokens": 5}),
    ("completions list", {"prompt": ["a", "b"], "echo": False, "n": 1}),
]


@pytest.mark.parametrize(("name", "body"), ROUND_TRIPS, ids=[r[0] for r in ROUND_TRIPS])
def test_round_trip_keeps_every_field(name: str, body: dict[str, Any]) -> None:
    check_round_trip(OPENAI_COMPLETIONS, body)


def test_bad_bodies_are_rejected_with_a_reason() -> None:
    check_rejected(OPENAI_COMPLETIONS, {"model": "m"}, "'prompt' is required")


@pytest.mark.parametrize(
    ("prompt", "says"),
    [(-1, "'prompt'"), ([1, -2], "outside any vocabulary"), ([[[["a"]]]], "array of them"),
     ([True], "array of them"), ({"a": 1}, "string or an array")],
)  # fmt: skip
def test_prompts_that_hold_no_text_or_token_ids_are_refused(prompt: Any, says: str) -> None:
    check_rejected(OPENAI_COMPLETIONS, {"prompt": prompt}, says)


def test_a_completion_is_no_chat() -> None:
    conv = OPENAI_COMPLETIONS.parse({"prompt": "Once", "max_tokens": 5})
    assert (conv.kind, conv.prompt, conv.stream) == ("completion", "Once", False)
    assert dict(conv.params) == {"max_tokens": 5}
