"""The canonical type's message memo: a message parsed before is taken as it was, and only
when its JSON value is the same."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.core.conversation import Message, MessageMemo
from proxy.core.errors import BadRequest
from proxy.dialects.base import parse_messages
from proxy.rewrite.tape import message_hash

TOOL = {"role": "tool", "content": "42", "tool_call_id": "c1"}
NAN, INF = float("nan"), float("inf")
CALL = {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
        "function": {"name": "f", "arguments": "{}"}}]}  # fmt: skip


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
        b["role"],
        b["content"],
        {k: v for k, v in b.items() if k not in ("role", "content")},
    )


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


def test_a_list_that_extends_a_recent_one_takes_its_messages_without_a_key_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Own time (issue 20): a key per message (its JSON, hashed, looked up) was most of
    parsing a 400-message conversation every turn."""
    import proxy.core.conversation as conversation

    keys = []
    real = conversation.memo_key
    monkeypatch.setattr(conversation, "memo_key", lambda item: keys.append(item) or real(item))
    memo = MessageMemo()
    history = [{"role": ("user", "assistant")[i % 2], "content": f"m{i}"} for i in range(40)]
    first = parse_messages({"messages": history}, memo)
    keys.clear()
    call = {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function",
            "function": {"name": "f", "arguments": "{}"}}]}  # fmt: skip
    again = parse_messages({"messages": [*history, call, TOOL]}, memo)
    assert again[:40] == first and all(a is b for a, b in zip(again, first, strict=False))
    assert keys == [call, TOOL]
    keys.clear()
    parse_messages({"messages": [*history, call, TOOL, {"role": "user", "content": "n"}]}, memo)
    assert keys == [call, {"role": "user", "content": "n"}]  # a null: looked up on its own


VALUES = st.sampled_from([None, NAN, INF, 1, 1.0, True, "1", "null", [None], [NAN], 2**64])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.tuples(st.sampled_from(["user", "tool"]), VALUES), max_size=5),
                min_size=1, max_size=8))  # fmt: skip
def test_lists_parsed_through_the_memo_equal_fresh_parses(
    lists: list[list[tuple[str, Any]]],
) -> None:
    """Any sequence of message lists, each sharing a prefix with the one before: what the
    memo gives is what parsing gives, down to 1, 1.0, true, NaN and null."""
    memo = MessageMemo()
    previous: list[dict[str, Any]] = []
    for k, items in enumerate(lists):
        raw = [{"role": role, "content": "x", "n": value} for role, value in items]
        raw = [*previous[: k % 3], *raw]
        got = parse_messages({"messages": raw}, memo)
        fresh = parse_messages({"messages": raw})
        assert [repr((m.role, m.content, dict(m.extra))) for m in got] == [
            repr((m.role, m.content, dict(m.extra))) for m in fresh]  # fmt: skip
        previous = raw


def long_history(n: int = 60) -> list[dict[str, Any]]:
    """Enough messages that the memo resumes their body's decoding (``RESUME_BYTES``)."""
    return [{"role": ("user", "assistant")[i % 2], "content": f"m{i} " + "x" * 400}
            for i in range(n)]  # fmt: skip


def kept(memo: MessageMemo, body: dict[str, Any]) -> list[Any]:
    """``body`` as the handler reads it: decoded (resumed where the memo can), then parsed."""
    raw = orjson.dumps(body)
    got = memo.decode(raw)
    decoded = orjson.loads(raw) if got is None else got
    parse_messages(decoded, memo)
    return decoded["messages"]


def test_a_body_that_extends_a_recent_list_decodes_only_its_new_messages() -> None:
    """Own time (issue 20): decoding a 31k-token body was a millisecond a turn, almost all
    of it the messages the previous turn held; those are the kept objects, the rest decoded."""
    memo = MessageMemo()
    history = long_history()
    first = kept(memo, {"model": "m", "messages": history, "stream": True})
    body = {"model": "m", "messages": [*history, CALL, TOOL], "stream": True, "tools": []}
    raw = orjson.dumps(body)
    got = memo.decode(raw)
    assert got == orjson.loads(raw) and list(got) == list(body)
    assert all(a is b for a, b in zip(got["messages"], first, strict=False))
    assert got["messages"][-2:] == [CALL, TOOL]


def test_the_same_body_again_takes_every_message_kept() -> None:
    memo = MessageMemo()
    body = {"messages": long_history(), "model": "m"}
    first = kept(memo, body)
    got = memo.decode(orjson.dumps(body))
    assert got == body and all(a is b for a, b in zip(got["messages"], first, strict=True))


@pytest.mark.parametrize(
    ("name", "make"),
    [
        (
            "a later duplicate key replaces the list",
            lambda lst, new: b'{"messages":' + lst[:-1] + b"," + new + b'],"messages":[]}',
        ),
        (
            "a later duplicate key, escaped",
            lambda lst, new: b'{"messages":' + lst[:-1] + b'],"\\u006dessages":[' + new + b"]}",
        ),
        (
            "the list under another key, messages after",
            lambda lst, new: b'{"history":' + lst[:-1] + b'],"messages":[' + new + b"]}",
        ),
        (
            "the list nested one level down",
            lambda lst, new: b'{"messages":[' + lst[:-1] + b"," + new + b"]]}",
        ),
        (
            "the list inside a string",
            lambda lst, new: b'{"messages":[],"note":' + orjson.dumps(lst[:-1].decode()) + b"}",
        ),
        ("a trailing comma", lambda lst, new: b'{"messages":' + lst[:-1] + b",]}"),
        ("more text after the object", lambda lst, new: b'{"messages":' + lst + b"} []"),
        (
            "a NaN after the list (the stdlib's)",
            lambda lst, new: b'{"messages":' + lst[:-1] + b"," + new + b'],"t":NaN}',
        ),
        (
            "an appended message",
            lambda lst, new: b'{"a":1,"messages":' + lst[:-1] + b"," + new + b'],"b":[2]}',
        ),
    ],
)
def test_a_resumed_decoding_is_the_whole_bodys_or_none(name: str, make: Any) -> None:
    """Whatever surrounds a kept list's bytes, the memo gives what decoding the body gives,
    or nothing (a body orjson refuses included: then the stdlib decides as before)."""
    memo = MessageMemo()
    history = long_history()
    kept(memo, {"messages": history})
    raw = make(orjson.dumps(history), orjson.dumps(TOOL))
    got = memo.decode(raw)
    try:
        want = orjson.loads(raw)
    except orjson.JSONDecodeError:
        assert got is None
        return
    assert got is None or got == want
    if name == "an appended message":
        assert got == want


def test_a_list_whose_items_held_nan_is_not_resumed() -> None:
    """The stdlib lets NaN in, and orjson writes it as null: a body saying null must not
    get the NaN back."""
    memo = MessageMemo()
    history = [*long_history(), {"role": "tool", "content": "x", "n": NAN}]
    parse_messages({"messages": history}, memo)
    raw = orjson.dumps({"messages": [*history, TOOL]})
    assert memo.decode(raw) is None
