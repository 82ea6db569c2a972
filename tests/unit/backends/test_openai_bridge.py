"""OpenAI chat requests as ollama's /api/chat takes them, and ollama's answers back in
OpenAI's shape (pure: the bridge is sans-IO)."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from proxy.backends.openai_bridge import OpenAIResponder, chat_request
from proxy.core.conversation import Message
from proxy.core.errors import BadRequest
from proxy.dialects.openai_chat import OpenAIChat

CALL = {"id": "c1", "type": "function",
        "function": {"name": "read_file", "arguments": '{"path": "a.txt"}'}}  # fmt: skip


def test_a_chat_request_in_ollamas_shape() -> None:
    conv = OpenAIChat().parse({
        "model": "qwen2.5:7b", "max_tokens": 64, "temperature": 0.2, "stream": True,
        "stream_options": {"include_usage": True}, "user": "u1",
        "tools": [{"type": "function", "function": {"name": "read_file", "parameters": {}}}],
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "Look:"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,QUJD"}}]},
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "c1", "content": "hello"},
        ]})  # fmt: skip
    body = chat_request(conv)
    assert body["model"] == "qwen2.5:7b" and body["stream"] is True
    assert body["options"] == {"num_predict": 64, "temperature": 0.2}
    assert "user" not in body and "stream_options" not in body
    system, user, assistant, tool = body["messages"]
    assert system == {"role": "system", "content": "Be brief."}
    assert user == {"role": "user", "content": "Look:", "images": ["QUJD"]}
    assert assistant["tool_calls"] == [{"function": {"name": "read_file",
                                                     "arguments": {"path": "a.txt"}}}]  # fmt: skip
    assert tool == {"role": "tool", "content": "hello", "tool_name": "read_file"}
    assert body["tools"][0]["function"]["name"] == "read_file"


def test_an_image_by_url_is_refused_for_ollama() -> None:
    conv = OpenAIChat().parse({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]})  # fmt: skip
    with pytest.raises(BadRequest, match="base64"):
        chat_request(conv)


DONE = {"done": True, "done_reason": "stop", "prompt_eval_count": 30, "eval_count": 2,
        "message": {"role": "assistant", "content": ""}}  # fmt: skip


def test_streamed_objects_become_chunks_with_usage() -> None:
    r = OpenAIResponder(model="m", include_usage=True)
    first = r.on_object({"message": {"role": "assistant", "content": "Hi"}, "done": False})
    assert first[0]["choices"][0]["delta"] == {"role": "assistant", "content": "Hi"}
    calls = r.on_object({"message": {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "run", "arguments": {"cmd": "ls"}}}]}, "done": False})  # fmt: skip
    call = calls[0]["choices"][0]["delta"]["tool_calls"][0]
    assert call["index"] == 0 and json.loads(call["function"]["arguments"]) == {"cmd": "ls"}
    end = r.on_object(DONE)
    assert end[0]["choices"][0]["finish_reason"] == "tool_calls"
    assert end[1]["usage"] == {"prompt_tokens": 30, "completion_tokens": 2, "total_tokens": 32}


def test_a_whole_answer_becomes_a_chat_completion() -> None:
    hi = {"role": "assistant", "content": "Hi"}
    out = OpenAIResponder(model="m").whole({**DONE, "done_reason": "length", "message": hi})
    assert out["object"] == "chat.completion"
    assert out["choices"][0] == {"index": 0, "finish_reason": "length",
                                 "message": {"role": "assistant", "content": "Hi"}}  # fmt: skip
    assert out["usage"]["prompt_tokens"] == 30


@pytest.mark.parametrize(
    ("params", "options"),
    [({"max_completion_tokens": 9}, {"num_predict": 9}),
     ({"max_tokens": 4, "max_completion_tokens": 9}, {"num_predict": 4}),
     ({"n": 2, "logprobs": True, "top_p": 0.5}, {"top_p": 0.5}),
     ({}, None)],
)  # fmt: skip
def test_parameters_sent_as_ollama_options(params: dict[str, Any], options: Any) -> None:
    conv = OpenAIChat().parse({"messages": [], **params})
    assert chat_request(conv).get("options") == options


@pytest.mark.parametrize(
    ("message", "says"),
    [(Message.make("user", [{"type": "input_audio"}]), "cannot be sent to ollama"),
     (Message.make("assistant", None, tool_calls=[{"function": {"name": "f",
                                                                "arguments": "{"}}]),
      "must be JSON")],
)  # fmt: skip
def test_what_ollama_cannot_take_is_a_bad_request(message: Message, says: str) -> None:
    conv = OpenAIChat().parse({"messages": []})
    with pytest.raises(BadRequest, match=says):
        chat_request(replace(conv, messages=(message,)))


def test_reasoning_becomes_thinking_and_empty_arguments_an_object() -> None:
    conv = OpenAIChat().parse({"messages": [{
        "role": "assistant", "content": "ok", "reasoning_content": "hmm",
        "tool_calls": [{"id": "x", "function": {"name": "f", "arguments": " "}}]}]})  # fmt: skip
    (message,) = chat_request(conv)["messages"]
    assert message["thinking"] == "hmm"
    assert message["tool_calls"] == [{"function": {"name": "f", "arguments": {}}}]
    assert json.dumps(message)  # plain JSON, no frozen maps
