"""The canonical type's message memo: a message parsed before is taken as it was, and only
when its JSON value is the same."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from proxy.core.conversation import Message, MessageMemo
from proxy.core.errors import BadRequest
from proxy.dialects.base import parse_messages
from proxy.rewrite.tape import message_hash

TOOL = {"role": "tool", "content": "42", "tool_call_id": "c1"}
NAN, INF = float("nan"), float("inf")


def test_a_message_parsed_before_is_the_same_object_and_equal_to_a_fresh_parse() -> None:
    memo = MessageMemo()
    first = parse_messages({"messages": [{"role": "user", "content": "hi"}, TOOL]}, memo)
    again = parse_messages({"messages": [{"role": "user", "content": "hi"}, dict(TOOL),
                                         {"role": "user", "content": "new"}]}, memo)  # fmt: skip
    assert again[0] is first[0] and again[1] is first[1]
    assert again == parse_messages({"messages": [{"role": "user", "content": "hi"}, TOOL,
                                                 {"role": "user", "content": "new"}]})  # fmt: skip
    assert len(memo) == 3


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ({"role": "user", "content": "1", "n": 1}, {"role": "user", "content": "1", "n": 1.0}),
        ({"role": "user", "content": "1", "n": 1}, {"role": "user", "content": "1", "n": True}),
        ({"role": "user", "content": "a\nb"}, {"role": "user", "content": "a\\nb"}),
        ({"role": "user", "content": "x"}, {"role": "assistant", "content": "x"}),
        ({"role": "user", "content": [{"type": "text", "text": "x"}]},
         {"role": "user", "content": [{"type": "text", "text": "x "}]}),
        # orjson writes NaN and the infinities as null (the stdlib's decoding lets them in)
        ({"role": "user", "content": "1", "n": None}, {"role": "user", "content": "1", "n": NAN}),
        ({"role": "user", "content": "1", "n": [INF]},
         {"role": "user", "content": "1", "n": [None]}),
        ({"role": "user", "content": "1", "n": 2**64},
         {"role": "user", "content": "1", "n": 2**64 + 1}),
        ({"role": "user", "content": "1", "n": {"a": 1}},
         {"role": "user", "content": "1", "n": {"a": "1"}}),
        ({"role": "user", "content": "\ud800"}, {"role": "user", "content": "\ud801"}),
        ({"role": "user", "content": "x", "name": "a"},
         {"name": "a", "role": "user", "content": "x"}),
    ],
)  # fmt: skip
def test_different_values_never_share_a_memo_entry(a: dict[str, Any], b: dict[str, Any]) -> None:
    memo = MessageMemo()
    (first,) = parse_messages({"messages": [a]}, memo)
    (second,) = parse_messages({"messages": [b]}, memo)
    assert second is not first
    assert (second.role, second.content, dict(second.extra)) == (
        b["role"], b["content"], {k: v for k, v in b.items() if k not in ("role", "content")})


def test_a_bad_message_is_refused_with_or_without_the_memo() -> None:
    memo = MessageMemo()
    parse_messages({"messages": [{"role": "user", "content": "ok"}]}, memo)
    with pytest.raises(BadRequest, match=r"messages\[1\].content"):
        parse_messages({"messages": [{"role": "user", "content": "ok"},
                                     {"role": "user", "content": 5}]}, memo)  # fmt: skip


def test_the_memo_is_bounded_oldest_out() -> None:
    memo = MessageMemo(max_chars=16 * 60)
    for i in range(40):
        parse_messages({"messages": [{"role": "user", "content": f"message {i:03d}"}]}, memo)
    assert 0 < len(memo) < 40
    (latest,) = parse_messages({"messages": [{"role": "user", "content": "message 039"}]}, memo)
    (oldest,) = parse_messages({"messages": [{"role": "user", "content": "message 000"}]}, memo)
    assert latest.content == "message 039" and oldest.content == "message 000"


def test_a_hash_kept_with_a_message_does_not_follow_a_changed_copy() -> None:
    message = Message.make("tool", "42", tool_call_id="c1")
    before = message_hash(message)
    assert message.derived["hash"] == before
    changed = replace(message, content="43")
    assert "hash" not in changed.derived
    assert message_hash(changed) != before


def test_message_text_joins_text_parts_only() -> None:
    msg = Message.make(
        "user",
        [{"type": "text", "text": "a"}, {"type": "image_url"}, {"type": "text", "text": "b"}],
    )
    assert msg.text() == "ab"
