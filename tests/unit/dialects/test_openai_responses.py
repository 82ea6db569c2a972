"""OpenAI Responses: the conversion llama-server applies (server-chat.cpp), item by item,
the typed events a chat stream becomes, and ``previous_response_id``'s expansion."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.core.errors import BadRequest
from proxy.dialects.openai_responses import DIALECT, ResponsesResponder, expand, output_items
from tests.unit.dialects.cases import call_chunk, chunk


def chat(body: dict[str, Any]) -> dict[str, Any]:
    return DIALECT.render(DIALECT.parse(body))


CASES = [
    ("a string input after the instructions", {"instructions": "S", "input": "hi"},
     [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}]),
    ("input text parts (one part: its string); developer kept as a role",
     {"input": [{"role": "developer", "content": [{"type": "input_text", "text": "d"}]},
                {"type": "message", "role": "user", "content": "u"}]},
     [{"role": "developer", "content": "d"}, {"role": "user", "content": "u"}]),
    ("assistant items merge into the assistant message before them",
     {"input": [{"type": "message", "role": "assistant",
                 "content": [{"type": "output_text", "text": "a"}]},
                {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c", "output": "r"}]},
     [{"role": "assistant", "content": "a",
       "tool_calls": [{"function": {"arguments": "{}", "name": "f"}, "id": "c",
                       "type": "function"}]},
      {"role": "tool", "content": "r", "tool_call_id": "c"}]),
    ("a function call alone opens an assistant message",
     {"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}]},
     [{"role": "assistant", "content": None,  # null and absent render alike
       "tool_calls": [{"function": {"arguments": "{}", "name": "f"},
                                            "id": "c", "type": "function"}]}]),
]  # fmt: skip


@pytest.mark.parametrize(("name", "body", "messages"), CASES, ids=[c[0] for c in CASES])
def test_items_convert_as_llama_server_converts_them(
    name: str, body: dict[str, Any], messages: list[dict[str, Any]]
) -> None:
    assert chat(body)["messages"] == messages


def test_converting_leaves_the_clients_items_as_they_were() -> None:
    """Decoded items may be kept for the next turn's body (``MessageMemo.decode``): a
    function call merged into an assistant message that carried its own ``tool_calls``
    must not append to the client's list."""
    own = [{"function": {"arguments": "{}", "name": "g"}, "id": "a", "type": "function"}]
    item = {"type": "message", "role": "assistant", "tool_calls": own,
            "content": [{"type": "output_text", "text": "a"}]}  # fmt: skip
    call = {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}
    out = chat({"input": [item, call]})
    assert len(out["messages"][0]["tool_calls"]) == 2 and len(own) == 1


def test_parameters_convert_and_the_rest_is_kept() -> None:
    out = chat({"model": "gpt", "input": "x", "max_output_tokens": 5,
                "reasoning": {"effort": "low"}, "prompt_cache_key": "k", "store": False,
                "tools": [{"type": "function", "name": "f", "parameters": {}},
                          {"type": "web_search"}]})  # fmt: skip
    assert out["max_tokens"] == 5 and out["reasoning_effort"] == "low"
    assert out["prompt_cache_key"] == "k" and out["store"] is False
    assert out["tools"] == [
        {"type": "function", "function": {"name": "f", "parameters": {}, "strict": True}}
    ]
    assert "max_output_tokens" not in out and "reasoning" not in out


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"input": 3},
        {"input": [{"role": "assistant", "content": "no type"}]},
        {"input": [{"role": "user", "content": [{"type": "x"}]}]},
    ],
)
def test_malformed_bodies_are_a_400(body: Any) -> None:
    with pytest.raises(BadRequest):
        DIALECT.parse(body)


def test_a_chat_stream_becomes_responses_events() -> None:
    r = ResponsesResponder(model="m")
    events = r.on_chunk(chunk({"role": "assistant"}))
    events += r.on_chunk(chunk({"content": "He"}))
    events += r.on_chunk(chunk({"content": "llo"}))
    events += r.on_chunk(call_chunk("{"))
    events += r.on_chunk(chunk({"tool_calls": [{"index": 0, "function": {"arguments": "}"}}]}))
    events += r.on_chunk(
        chunk(finish="tool_calls", timings={"prompt_n": 5, "cache_n": 95, "predicted_n": 4})
    )
    events += r.closing()
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed",
    ]  # fmt: skip
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    done = events[-1]["response"]
    assert done["usage"]["input_tokens"] == 100
    assert done["usage"]["input_tokens_details"]["cached_tokens"] == 95
    message, call = done["output"]
    assert message["content"][0]["text"] == "Hello"
    assert call == {
        "id": "fc_c1",
        "type": "function_call",
        "status": "completed",
        "arguments": "{}",
        "call_id": "c1",
        "name": "f",
    }


def test_a_stored_conversation_goes_before_the_new_input_and_converts_back() -> None:
    r = ResponsesResponder(model="m")
    answer = r.whole({"choices": [{"finish_reason": "stop", "message": {"content": "A1"}}]})
    earlier = [{"role": "user", "content": "Q1"}, *output_items(answer)]
    body = expand({"previous_response_id": "x", "input": "Q2", "instructions": "S"}, earlier)
    assert "previous_response_id" not in body
    assert [(m["role"], m["content"]) for m in chat(body)["messages"]] == [
        ("system", "S"),
        ("user", "Q1"),
        ("assistant", "A1"),
        ("user", "Q2"),
    ]
