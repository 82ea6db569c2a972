"""llama-server's /completion: the completions layout, token ids passed through."""

from __future__ import annotations

from typing import Any

from proxy.core.errors import BadRequest
from proxy.dialects.llamacpp_completion import DIALECT as LLAMA_COMPLETION
from tests.unit.dialects.cases import check_rejected, check_round_trip


def test_round_trip_keeps_every_field() -> None:
    check_round_trip(LLAMA_COMPLETION, {"prompt": [1, 2, 3], "n_predict": 4, "stream": True})


def test_bad_bodies_are_rejected_with_a_reason() -> None:
    check_rejected(LLAMA_COMPLETION, {"prompt": 3}, "'prompt'")


def test_error_bodies_follow_the_dialect() -> None:
    expected: dict[str, Any] = {
        "error": {"message": "boom", "type": "invalid_request_error", "code": 400}
    }
    assert LLAMA_COMPLETION.error_body(BadRequest("boom")) == expected


def test_token_ids_and_mixed_prompts_pass_untouched() -> None:
    conv = LLAMA_COMPLETION.parse({"prompt": ["text", [1, 2], 3]})
    assert LLAMA_COMPLETION.render(conv)["prompt"] == ["text", [1, 2], 3]
    assert (LLAMA_COMPLETION.family, LLAMA_COMPLETION.path) == ("llamacpp", "/completion")
