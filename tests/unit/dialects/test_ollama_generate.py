"""ollama /api/generate: one string prompt (templated unless raw), options as in chat."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.core.errors import BadRequest
from proxy.dialects.ollama_generate import DIALECT as OLLAMA_GENERATE
from tests.unit.dialects.cases import check_rejected, check_round_trip


def test_round_trip_keeps_every_field() -> None:
    check_round_trip(
        OLLAMA_GENERATE,
        {
            "model": "smollm2",
            "prompt": "Why is the sky blue?",
            "system": "short answers",
            "raw": True,
            "stream": True,
            "format": {"type": "object", "properties": {"a": {"type": "string"}}},
            "options": {"top_k": 20, "stop": ["\n"]},
            "context": [1, 2, 3],
        },
    )


BAD_BODIES: list[tuple[str, Any, str]] = [
    ("generate missing prompt", {"model": "m"}, "'prompt' is required"),
    ("generate prompt list", {"prompt": ["a"]}, "'prompt'"),
    ("generate images not strings", {"prompt": "x", "images": [1]}, "images"),
]


@pytest.mark.parametrize(("name", "body", "says"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_bad_bodies_are_rejected_with_a_reason(name: str, body: Any, says: str) -> None:
    check_rejected(OLLAMA_GENERATE, body, says)


def test_error_bodies_follow_the_dialect() -> None:
    assert OLLAMA_GENERATE.error_body(BadRequest("boom")) == {"error": "boom"}


def test_a_generate_body_is_a_streamed_completion_by_default() -> None:
    conv = OLLAMA_GENERATE.parse({"prompt": "hi", "options": {"num_predict": 3}})
    assert (conv.kind, conv.prompt, conv.stream) == ("completion", "hi", True)
    assert dict(conv.params) == {"max_tokens": 3}
