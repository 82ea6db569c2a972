"""Template features and message normalizations (the e2e test compares with the server)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from proxy.tokens.templates import (
    KWARGS,
    NORMALIZATIONS,
    PARTS,
    PLAIN,
    PROBES,
    TOOL_CALLS,
    TOOLS,
    Normalization,
    Verified,
    features,
)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, {PLAIN}),
        (PROBES[TOOLS], {PLAIN, TOOLS}),
        (PROBES[TOOL_CALLS], {PLAIN, TOOLS, TOOL_CALLS}),
        (PROBES[PARTS], {PLAIN, PARTS}),
        (PROBES[KWARGS], {PLAIN, KWARGS}),
        ({"messages": [{"role": "assistant", "content": "x", "reasoning_content": "r"}]},
         {PLAIN, "other", "prefill"}),
        (PROBES["prefill"], {PLAIN, "prefill"}),
        ({"messages": [{"role": "user", "content": "x"}], "tool_choice": "auto"}, {PLAIN, "other"}),
    ],
)  # fmt: skip
def test_features(body: dict[str, Any], expected: set[str]) -> None:
    assert features(body) == expected


def test_normalizations_rewrite_copies_never_the_request() -> None:
    messages = copy.deepcopy(PROBES[TOOL_CALLS]["messages"])
    messages.insert(2, {"role": "user", "content": [{"type": "text", "text": "a"},
                                                    {"type": "text", "text": "b"}]})  # fmt: skip
    before = copy.deepcopy(messages)
    out = Normalization(object_arguments=True, join_parts=True, merge_system=True).apply(messages)
    assert messages == before
    assert out[0]["role"] == "user"
    assert out[0]["content"].startswith("You are terse. Tools may help.\nWeather")
    assert out[1]["content"] == "a\nb"
    assert out[2]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}


def test_a_request_renders_here_only_with_a_normalization_all_its_features_verified() -> None:
    plain_only = frozenset(NORMALIZATIONS[:2])
    verified = Verified(features={PLAIN: frozenset(NORMALIZATIONS), TOOLS: plain_only,
                                  TOOL_CALLS: frozenset(NORMALIZATIONS[2:4])})  # fmt: skip
    assert verified.normalization(frozenset({PLAIN, TOOLS})) == NORMALIZATIONS[0]
    assert verified.normalization(frozenset({PLAIN, TOOLS, TOOL_CALLS})) is None  # no overlap
    assert verified.normalization(frozenset({PLAIN, PARTS})) is None  # not verified


@pytest.mark.parametrize(
    ("template", "marker"),
    [
        # as llama-server's autoparser logs them (user_msg_start, --verbose), where checked
        ("google-gemma-2-2b-it", "<start_of_turn>user"),
        ("Qwen-Qwen2.5-7B-Instruct", "<|im_start|>user"),
        ("Qwen3.5-4B", "<|im_start|>user"),
        ("meta-llama-Llama-3.1-8B-Instruct", "<|start_header_id|>user<|end_header_id|>"),
        ("openai-gpt-oss-120b", "<|start|>user<|message|>"),
        ("mistralai-Mistral-Nemo-Instruct-2407", "[INST]"),
        ("deepseek-ai-DeepSeek-V3.1", "<｜User｜>"),
        ("google-gemma-4-31B-it", "<|turn>user"),
    ],
)
def test_user_start_marker(template: str, marker: str) -> None:
    from proxy.tokens.templates import user_start_marker
    from tests.llama_sdist import models_dir

    text = (models_dir() / "templates" / f"{template}.jinja").read_text()
    assert user_start_marker(text, {"bos_token": "<s>", "eos_token": "</s>"}) == marker


CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
          "{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")  # fmt: skip


def test_an_assistant_prefill_is_continued_not_closed() -> None:
    """llama-server renders the messages before it, the generation prompt, then its
    content unclosed (the reply continues it)."""
    from proxy.tokens.templates import PREFILL, Normalization, features, render

    body = {"messages": [{"role": "user", "content": "Sky?"},
                         {"role": "assistant", "content": '{"colour": "'}]}  # fmt: skip
    assert PREFILL in features(body)
    assert render(CHATML, body, {}, Normalization()) == (
        '<|im_start|>user\nSky?<|im_end|>\n<|im_start|>assistant\n{"colour": "'
    )
    part = {"type": "text", "text": "a"}
    parts = {"messages": [{"role": "user", "content": "x"},
                          {"role": "assistant", "content": [part]}]}  # fmt: skip
    assert "other" in features(parts)  # parts in a prefill: the server renders it
