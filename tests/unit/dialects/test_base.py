"""What every dialect shares: error framing and the checks bodies are parsed with."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from proxy.core.conversation import Conversation, Message
from proxy.core.errors import BadRequest
from proxy.dialects.base import (
    MAX_TOKEN_ID,
    check_message_fields,
    check_parts,
    check_prompt_item,
    optional_bool,
    optional_str,
    parse_messages,
    render_envelope,
    render_message,
    require_object,
)
from proxy.dialects.ollama_chat import DIALECT as OLLAMA_CHAT
from proxy.dialects.openai_chat import DIALECT as OPENAI_CHAT


def test_stream_errors_use_the_dialect_framing() -> None:
    assert OPENAI_CHAT.stream_error(BadRequest("x")).startswith(b"data: {")
    assert OPENAI_CHAT.stream_error(BadRequest("x")).endswith(b"\n\n")
    assert OLLAMA_CHAT.stream_error(BadRequest("x")) == b'{"error": "x"}\n'


@pytest.mark.parametrize("body", [[], "x", 3, None])
def test_require_object(body: Any) -> None:
    with pytest.raises(BadRequest, match="JSON object"):
        require_object(body)


@pytest.mark.parametrize(
    ("value", "default", "expected"),
    [(None, True, True), (None, False, False), (True, False, True), (False, True, False)],
)
def test_optional_bool(value: Any, default: bool, expected: bool) -> None:
    assert optional_bool({"stream": value}, "stream", default) is expected
    assert optional_bool({}, "stream", default) is default


@pytest.mark.parametrize("value", ["yes", 1, 0, [], {}])
def test_optional_bool_refuses_what_is_no_boolean(value: Any) -> None:
    with pytest.raises(BadRequest, match="'stream' must be a boolean"):
        optional_bool({"stream": value}, "stream", False)


def test_optional_str() -> None:
    assert optional_str({"model": "m"}, "model") == "m"
    assert optional_str({}, "model") is None
    with pytest.raises(BadRequest, match="'model' must be a string"):
        optional_str({"model": 3}, "model")


@pytest.mark.parametrize(
    ("item", "ok"),
    [("text", True), (0, True), (MAX_TOKEN_ID, True), ([1, "a", [2, 3]], True),
     (-1, False), (MAX_TOKEN_ID + 1, False), (True, False), (1.5, False), (None, False),
     ([[[1]]], False)],
)  # fmt: skip
def test_prompt_items_are_text_token_ids_or_one_level_of_arrays(item: Any, ok: bool) -> None:
    if ok:
        check_prompt_item(item, "p")
    else:
        with pytest.raises(BadRequest):
            check_prompt_item(item, "p")


@pytest.mark.parametrize(
    ("parts", "says"),
    [([1], "must be an object"), ([{"text": "x"}], "string 'type'"),
     ([{"type": "text", "text": 3}], ".text must be a string")],
)  # fmt: skip
def test_content_parts_are_typed_objects(parts: list[Any], says: str) -> None:
    with pytest.raises(BadRequest, match=says):
        check_parts(parts, "c")
    check_parts([{"type": "image_url"}, {"type": "text", "text": "x"}], "c")


@pytest.mark.parametrize(
    ("item", "says"),
    [({"tool_calls": {}}, "tool_calls must be an array"),
     ({"tool_calls": [1]}, r"tool_calls\[0\] must be an object"),
     ({"tool_calls": [{"function": "f"}]}, "function must be an object"),
     ({"tool_calls": [{"function": {"name": 1}}]}, "function.name must be a string"),
     ({"tool_calls": [{"id": 1}]}, "id must be a string"),
     ({"images": "x"}, "images must be an array of strings"),
     ({"tool_call_id": 5}, "tool_call_id must be a string"),
     ({"name": []}, "name must be a string")],
)  # fmt: skip
def test_message_fields_rules_read_are_checked(item: dict[str, Any], says: str) -> None:
    with pytest.raises(BadRequest, match=says):
        check_message_fields(item, "m")


def test_a_message_that_is_no_object_is_named_by_its_index() -> None:
    with pytest.raises(BadRequest, match=r"messages\[1\] must be an object"):
        parse_messages({"messages": [{"role": "user", "content": "a"}, "b"]})


def test_the_envelope_has_model_only_when_set_and_always_stream() -> None:
    assert render_envelope(Conversation(kind="chat"), messages=[]) == {
        "messages": [], "stream": False}  # fmt: skip
    conv = Conversation(kind="chat", model="m", stream=True, tools=({"type": "function"},))
    assert render_envelope(conv) == {"model": "m", "tools": [{"type": "function"}],
                                     "stream": True}  # fmt: skip


def test_a_message_is_rendered_once_and_a_changed_copy_again() -> None:
    """The upstream body of a long conversation re-renders only its new messages."""
    msg = Message.make("assistant", None, tool_calls=[{"id": "c1", "function": {"name": "t"}}])
    first = render_message(msg)
    assert render_message(msg) is first
    assert first == {"role": "assistant", "content": None,
                     "tool_calls": [{"id": "c1", "function": {"name": "t"}}]}  # fmt: skip
    changed = replace(msg, content="now with text")
    assert render_message(changed)["content"] == "now with text"
    assert render_message(msg)["content"] is None
