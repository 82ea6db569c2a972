"""Anthropic Messages: the conversion llama-server applies (server-chat.cpp), case by case,
and the typed events a chat stream becomes."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.core.errors import BadRequest, Overloaded
from proxy.dialects.anthropic_messages import DIALECT, MessagesResponder, normalize_billing_header
from tests.unit.dialects.cases import call_chunk, chunk


def chat(body: dict[str, Any]) -> dict[str, Any]:
    return DIALECT.render(DIALECT.parse(body))


CASES = [
    ("system string", {"system": "S", "messages": [{"role": "user", "content": "hi"}]},
     [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}]),
    ("system blocks joined without separator",
     {"system": [{"type": "text", "text": "A"}, {"type": "text", "text": "B",
                                                  "cache_control": {"type": "ephemeral"}}],
      "messages": []},
     [{"role": "system", "content": "AB"}]),
    ("cache marker dropped; one text block is its string (rendered alike)",
     {"messages": [{"role": "user", "content": [
         {"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}]}]},
     [{"role": "user", "content": "x"}]),
    ("tool use becomes a tool call, thinking the reasoning",
     {"messages": [{"role": "assistant", "content": [
         {"type": "thinking", "thinking": "hmm"},
         {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}]}]},
     [{"role": "assistant", "content": "", "reasoning_content": "hmm",
       "tool_calls": [{"id": "t1", "type": "function",
                       "function": {"name": "f", "arguments": "{\"a\":1}"}}]}]),
    ("tool results after the message's own text, text-only collapsed",
     {"messages": [{"role": "user", "content": [
         {"type": "tool_result", "tool_use_id": "t1",
          "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
         {"type": "text", "text": "next"}]}]},
     [{"role": "user", "content": "next"},
      {"role": "tool", "content": "ab", "tool_call_id": "t1"}]),
    ("an assistant message without content is skipped",
     {"messages": [{"role": "assistant"}, {"role": "user", "content": "x"}]},
     [{"role": "user", "content": "x"}]),
    ("a base64 image becomes a data URL",
     {"messages": [{"role": "user", "content": [{"type": "image", "source": {
         "type": "base64", "media_type": "image/png", "data": "AAA"}}]}]},
     [{"role": "user", "content": [{"type": "image_url",
                                    "image_url": {"url": "data:image/png;base64,AAA"}}]}]),
]  # fmt: skip


@pytest.mark.parametrize(("name", "body", "messages"), CASES, ids=[c[0] for c in CASES])
def test_messages_convert_as_llama_server_converts_them(
    name: str, body: dict[str, Any], messages: list[dict[str, Any]]
) -> None:
    assert chat(body)["messages"] == messages


def test_several_text_blocks_stay_parts() -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    assert chat({"messages": [{"role": "user", "content": parts}]})["messages"] == [
        {"role": "user", "content": parts}
    ]


def test_parameters_convert_and_other_fields_stay_out_of_the_chat_body() -> None:
    out = chat({"model": "claude", "messages": [], "stop_sequences": ["X"], "top_k": 5,
                "tool_choice": {"type": "any"}, "thinking": {"type": "enabled"},
                "metadata": {"user_id": "u1"}, "betas": ["x"], "stream": True,
                "tools": [{"name": "f", "input_schema": {"type": "object"},
                           "cache_control": {"type": "ephemeral"}}]})  # fmt: skip
    assert out == {"model": "claude", "messages": [], "stream": True, "stop": ["X"], "top_k": 5,
                   "tool_choice": "required", "max_tokens": 4096,
                   "thinking_budget_tokens": 10000, "__metadata_user_id": "u1",
                   "tools": [{"type": "function", "function": {
                       "name": "f", "description": "",
                       "parameters": {"type": "object"}}}]}  # fmt: skip


@pytest.mark.parametrize(("text", "want"), [
    ("x-anthropic-billing-header: cc_version=2; cch=a5145;You are",
     "x-anthropic-billing-header: cc_version=2; cch=fffff;You are"),
    ("x-anthropic-billing-header: cch=a51;", "x-anthropic-billing-header: cch=a51;"),
    ("You are cch=a5145;", "You are cch=a5145;"),
])  # fmt: skip
def test_the_billing_checksum_is_blanked_as_llama_server_does(text: str, want: str) -> None:
    assert normalize_billing_header(text) == want


@pytest.mark.parametrize("body", [[], {"messages": "x"}, {"messages": [1]},
                                  {"messages": [{"role": "user", "content": [{"t": 1}]}]},
                                  {"system": 3, "messages": []}])  # fmt: skip
def test_malformed_bodies_are_a_400(body: Any) -> None:
    with pytest.raises(BadRequest):
        DIALECT.parse(body)


def test_errors_have_anthropics_shape() -> None:
    assert DIALECT.error_body(Overloaded("busy")) == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "busy"},
    }
    assert DIALECT.stream_error(BadRequest("no")).startswith(b"event: error\ndata: ")


def test_a_chat_stream_becomes_anthropic_events_with_cached_tokens() -> None:
    r = MessagesResponder(model="claude")
    timings = {"prompt_n": 10, "cache_n": 90, "predicted_n": 3}
    events = r.on_chunk(chunk({"role": "assistant"}, timings=timings))
    events += r.on_chunk(chunk({"reasoning_content": "think"}))
    events += r.on_chunk(chunk({"content": "Hi"}))
    events += r.on_chunk(call_chunk(""))
    events += r.on_chunk(chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}))
    events += r.on_chunk(chunk(finish="tool_calls", timings=timings))
    events += r.closing()
    kinds = [(e["type"], e.get("index"), (e.get("delta") or e.get("content_block") or {})
              .get("type")) for e in events]  # fmt: skip
    assert kinds == [
        ("message_start", None, None),
        ("content_block_start", 0, "thinking"), ("content_block_delta", 0, "thinking_delta"),
        ("content_block_delta", 0, "signature_delta"), ("content_block_stop", 0, None),
        ("content_block_start", 1, "text"), ("content_block_delta", 1, "text_delta"),
        ("content_block_stop", 1, None),
        ("content_block_start", 2, "tool_use"), ("content_block_delta", 2, "input_json_delta"),
        ("content_block_stop", 2, None),
        ("message_delta", None, None), ("message_stop", None, None),
    ]  # fmt: skip
    assert events[0]["message"]["usage"]["cache_read_input_tokens"] == 90
    assert events[0]["message"]["usage"]["input_tokens"] == 10
    assert events[-2]["delta"]["stop_reason"] == "tool_use"
    assert events[-2]["usage"]["output_tokens"] == 3


def test_a_whole_chat_answer_becomes_one_message() -> None:
    answer = {"choices": [{"finish_reason": "length", "message": {
        "content": "Hi", "tool_calls": [{"id": "c", "function": {"name": "f",
                                                                  "arguments": "{\"a\":2}"}}]}}],
        "usage": {"prompt_tokens": 50, "completion_tokens": 2,
                  "prompt_tokens_details": {"cached_tokens": 40}}}  # fmt: skip
    out = MessagesResponder(model="m").whole(answer)
    assert out["content"] == [
        {"type": "text", "text": "Hi"},
        {"type": "tool_use", "id": "c", "name": "f", "input": {"a": 2}},
    ]
    assert out["stop_reason"] == "max_tokens"
    assert out["usage"]["input_tokens"] == 10 and out["usage"]["cache_read_input_tokens"] == 40
