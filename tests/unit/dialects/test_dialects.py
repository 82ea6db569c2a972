"""Each dialect parses to the canonical type and renders back to the same request."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.core.conversation import Message
from proxy.core.errors import BadRequest
from proxy.dialects import REGISTRY
from proxy.dialects.llamacpp_completion import DIALECT as LLAMA_COMPLETION
from proxy.dialects.ollama_chat import DIALECT as OLLAMA_CHAT
from proxy.dialects.ollama_generate import DIALECT as OLLAMA_GENERATE
from proxy.dialects.openai_chat import DIALECT as OPENAI_CHAT
from proxy.dialects.openai_completions import DIALECT as OPENAI_COMPLETIONS

TOOL = {
    "type": "function",
    "function": {
        "name": "read_file",
        "description": "Read a file",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}}},
    },
}

ROUND_TRIPS: list[tuple[str, Any, dict[str, Any]]] = [
    ("openai plain", OPENAI_CHAT, {"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
    (
        "openai tools and tool calls",
        OPENAI_CHAT,
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "read a.txt"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "read_file", "arguments": '{"path":"a.txt"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "hello"},
            ],
            "tools": [TOOL],
            "tool_choice": "auto",
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_completion_tokens": 64,
        },
    ),
    (
        "openai multimodal content parts",
        OPENAI_CHAT,
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    ],
                }
            ],
            "temperature": 0.2,
        },
    ),
    (
        "openai unknown fields kept",
        OPENAI_CHAT,
        {
            "messages": [{"role": "user", "content": "x", "name": "bob", "x-custom": [1, 2]}],
            "cache_prompt": True,
            "id_slot": 1,
            "some_future_field": {"nested": True},
        },
    ),
    ("completions string", OPENAI_COMPLETIONS, {"model": "m", "prompt": "Once", "max_tokens": 5}),
    ("completions list", OPENAI_COMPLETIONS, {"prompt": ["a", "b"], "echo": False, "n": 1}),
    (
        "llama tokens prompt",
        LLAMA_COMPLETION,
        {"prompt": [1, 2, 3], "n_predict": 4, "stream": True},
    ),
    (
        "ollama chat with options and images",
        OLLAMA_CHAT,
        {
            "model": "smollm2",
            "messages": [
                {"role": "user", "content": "look", "images": ["iVBORw0KGgo="]},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [{"function": {"name": "read_file", "arguments": {"path": "a"}}}],
                },
                {"role": "tool", "content": "data", "tool_name": "read_file"},
            ],
            "tools": [TOOL],
            "stream": False,
            "format": "json",
            "options": {"temperature": 0.1, "num_predict": 8, "num_ctx": 4096, "seed": 3},
            "keep_alive": "5m",
            "think": False,
        },
    ),
    (
        "ollama generate raw with schema",
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
    ),
]


@pytest.mark.parametrize(("name", "dialect", "body"), ROUND_TRIPS, ids=[r[0] for r in ROUND_TRIPS])
def test_round_trip_keeps_every_field(name: str, dialect: Any, body: dict[str, Any]) -> None:
    rendered = dialect.render(dialect.parse(body))
    default_stream = dialect.family == "ollama"
    assert rendered == {**body, "stream": body.get("stream", default_stream)}


def test_ollama_options_become_canonical_params() -> None:
    conv = OLLAMA_CHAT.parse(
        {
            "model": "m",
            "messages": [],
            "format": "json",
            "options": {"num_predict": 8, "temperature": 0.5, "num_ctx": 2048},
        }
    )
    assert dict(conv.params) == {
        "max_tokens": 8,
        "temperature": 0.5,
        "response_format": {"type": "json_object"},
    }
    assert conv.extra["options"] == {"num_ctx": 2048}
    assert conv.stream is True


def test_message_text_joins_text_parts_only() -> None:
    msg = Message.make(
        "user",
        [{"type": "text", "text": "a"}, {"type": "image_url"}, {"type": "text", "text": "b"}],
    )
    assert msg.text() == "ab"


BAD_BODIES: list[tuple[str, Any, Any, str]] = [
    ("not an object", OPENAI_CHAT, [1, 2], "JSON object"),
    ("missing messages", OPENAI_CHAT, {"model": "m"}, "'messages' is required"),
    ("messages not a list", OPENAI_CHAT, {"messages": "hi"}, "must be an array"),
    ("message without role", OPENAI_CHAT, {"messages": [{"content": "x"}]}, "role"),
    ("content a number", OPENAI_CHAT, {"messages": [{"role": "user", "content": 5}]}, "content"),
    ("stream not bool", OPENAI_CHAT, {"messages": [], "stream": "yes"}, "'stream'"),
    ("tools not a list", OPENAI_CHAT, {"messages": [], "tools": {"a": 1}}, "'tools'"),
    ("model not a string", OPENAI_CHAT, {"messages": [], "model": 3}, "'model'"),
    ("missing prompt", OPENAI_COMPLETIONS, {"model": "m"}, "'prompt' is required"),
    ("prompt a number", LLAMA_COMPLETION, {"prompt": 3}, "'prompt'"),
    ("ollama missing messages", OLLAMA_CHAT, {"model": "m"}, "'messages' is required"),
    ("ollama options not object", OLLAMA_CHAT, {"messages": [], "options": 3}, "'options'"),
    ("ollama bad format", OLLAMA_CHAT, {"messages": [], "format": 7}, "'format'"),
    ("generate missing prompt", OLLAMA_GENERATE, {"model": "m"}, "'prompt' is required"),
    ("generate prompt list", OLLAMA_GENERATE, {"prompt": ["a"]}, "'prompt'"),
]


@pytest.mark.parametrize(
    ("name", "dialect", "body", "says"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES]
)
def test_bad_bodies_are_rejected_with_a_reason(
    name: str, dialect: Any, body: Any, says: str
) -> None:
    with pytest.raises(BadRequest) as info:
        dialect.parse(body)
    assert says in info.value.message


@pytest.mark.parametrize(
    ("dialect", "expected"),
    [
        (OPENAI_CHAT, {"error": {"message": "boom", "type": "invalid_request_error", "code": 400}}),
        (
            LLAMA_COMPLETION,
            {"error": {"message": "boom", "type": "invalid_request_error", "code": 400}},
        ),
        (OLLAMA_CHAT, {"error": "boom"}),
        (OLLAMA_GENERATE, {"error": "boom"}),
    ],
)
def test_error_bodies_follow_the_dialect(dialect: Any, expected: dict[str, Any]) -> None:
    assert dialect.error_body(BadRequest("boom")) == expected


def test_stream_errors_use_the_dialect_framing() -> None:
    assert OPENAI_CHAT.stream_error(BadRequest("x")).startswith(b"data: {")
    assert OPENAI_CHAT.stream_error(BadRequest("x")).endswith(b"\n\n")
    assert OLLAMA_CHAT.stream_error(BadRequest("x")) == b'{"error": "x"}\n'


def test_registry_covers_every_dialect_path() -> None:
    assert {d.name for d in REGISTRY.values()} == {
        "openai_chat",
        "openai_completions",
        "llamacpp_completion",
        "ollama_chat",
        "ollama_generate",
        "anthropic_messages",
        "openai_responses",
    }
    for path, dialect in REGISTRY.items():
        assert path == dialect.path or path in ("/chat/completions", "/completions")
