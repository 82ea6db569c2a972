"""What the tokenizers share: the single prompt of a completion body, and the parts of a
chat body a template reads (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.tokens.base import TokenizerUnavailable, completion_prompt, template_body


@pytest.mark.parametrize(
    ("body", "prompt"),
    [({"prompt": "hi"}, "hi"), ({"prompt": ["hi"]}, "hi"), ({"prompt": [1, 2]}, [1, 2]),
     ({"prompt": [[1, 2]]}, [1, 2]), ({"prompt": ["a", "b"]}, None), ({"prompt": []}, None),
     ({"prompt": [1, "a"]}, None), ({"prompt": 3}, None), ({}, None)],
)  # fmt: skip
def test_completion_prompt(body: dict[str, Any], prompt: Any) -> None:
    assert completion_prompt(body) == prompt


def test_template_body_keeps_what_shapes_the_prompt() -> None:
    body = {"model": "m", "messages": [], "tools": [], "tool_choice": "auto", "stream": True,
            "chat_template_kwargs": {"x": 1}, "parallel_tool_calls": False,
            "temperature": 0}  # fmt: skip
    assert template_body(body) == {"messages": [], "tools": [], "tool_choice": "auto",
                                   "chat_template_kwargs": {"x": 1},
                                   "parallel_tool_calls": False}  # fmt: skip
    assert template_body({}) == {}


def test_an_unavailable_tokenizer_is_a_proxy_error() -> None:
    err = TokenizerUnavailable("no model")
    assert (err.message, err.status) == ("no model", 503)
