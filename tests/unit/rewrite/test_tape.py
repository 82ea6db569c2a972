"""Session tapes: their bytes, their hashes, whose they are, and the bounded store."""

from __future__ import annotations

import time

import pytest

from proxy.core.conversation import Message
from proxy.rewrite.identity import Identity
from proxy.rewrite.tape import Tape, TapeStore, hash_of, text_hash


def m(role: str, content: object, **extra: object) -> Message:
    return Message.make(role, content, **extra)


def test_tapes_round_trip_through_bytes() -> None:
    tape = Tape("l1", ["h"], ["user"], [m("user", [{"type": "text", "text": "é"}], name="n")])
    assert Tape.load(tape.dump()) == tape


def test_tape_store_is_bounded_and_mirrored() -> None:
    mirror: dict[str, bytes | None] = {}
    store = TapeStore(max_tapes=2, persist=lambda k, v: mirror.__setitem__(k, v and v()))
    for i in range(3):
        store.put(Tape(f"l{i}", [str(i)], ["user"], []))
    assert len(store) == 2 and mirror["l0"] is None and mirror["l2"] is not None
    again = TapeStore()
    again.restore([v for v in mirror.values() if v])
    assert again.get("l2") is not None and again.get("l0") is None


@pytest.mark.parametrize(
    "message",
    [
        Message.make("user", "plain"),
        Message.make("tool", 'x"\\\n\u2028é\ud800', tool_call_id='c"1', name="zz"),
        Message.make("tool", "", tool_call_id=""),
        Message.make("assistant", None, tool_calls=[{"id": "1", "type": "function",
                     "function": {"name": "f", "arguments": '{"a": 1}'}}]),
        Message.make("user", [{"type": "text", "text": "a"}, {"type": "image_url",
                     "image_url": {"url": "data:x"}}]),
        Message.make("user", "x", weird=3, nested={"b": [1, {"c": None}]}),
    ],
)  # fmt: skip
def test_a_message_hash_is_that_of_its_canonical_json(message: Message) -> None:
    """Tapes persist these hashes: the fast paths must give what the definition gives (the
    sorted, compact JSON of role, content and extra; a plain message: role NUL content)."""
    import json

    import xxhash

    from proxy.core.conversation import thaw
    from proxy.rewrite.tape import message_hash

    if isinstance(message.content, str) and not message.extra:
        raw = f"{message.role}\x00{message.content}"
    else:
        data = {"role": message.role, "content": thaw(message.content),
                "extra": thaw(message.extra)}  # fmt: skip
        raw = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert message_hash(message) == xxhash.xxh3_64_hexdigest(raw.encode("utf-8", "surrogatepass"))


def test_a_plain_message_never_hashes_as_a_json_one() -> None:
    assert hash_of(m("user", "x")) != hash_of(m("user", "x", name="n"))
    assert text_hash("  a  \n") == text_hash("a")


@pytest.mark.parametrize(
    ("principal", "session", "issued", "identity", "belongs"),
    [("p", None, "", Identity("p"), True),
     ("p", None, "", Identity("q"), False),
     ("p", "s", "", Identity("p", "s"), True),
     ("p", "s", "", Identity("p", "t"), False),
     ("p", None, "k", Identity("p", "k"), True),  # the key kvproxy issued, echoed
     ("p", None, "k", Identity("q", "k"), False),
     ("p", None, "", Identity("p", ""), False)],
)  # fmt: skip
def test_a_tape_belongs_to_its_principal_and_session(principal: str, session: str | None,
                                                     issued: str, identity: Identity,
                                                     belongs: bool) -> None:  # fmt: skip
    tape = Tape("l", [], [], [], principal=principal, session=session, issued=issued)
    assert tape.belongs_to(identity) is belongs


def test_sent_system_is_the_first_sent_system_text() -> None:
    assert Tape("l", [], [], [m("system", "S"), m("user", "u")]).sent_system == "S"
    assert Tape("l", [], [], [m("user", "u")]).sent_system is None
    assert Tape("l", [], [], []).sent_system is None


def test_tape_store_is_bounded_in_bytes() -> None:
    store = TapeStore(max_bytes=250)
    for i in range(3):
        store.put(Tape(f"l{i}", [], [], [m("user", "x" * 100)]))
    assert [t.lineage for t in store.all()] == ["l1", "l2"]


def test_tape_store_drops_tapes_past_their_age_on_restore() -> None:
    old = Tape("old", [], [], [], updated=time.time() - 1000)
    new = Tape("new", [], [], [], updated=time.time())
    store = TapeStore(max_age=100)
    store.restore([old.dump(), b"not json", new.dump(), b'{"lineage": 1}'])
    assert [t.lineage for t in store.all()] == ["new"]


def test_putting_a_tape_again_moves_it_last_and_counts_it_once() -> None:
    store = TapeStore(max_tapes=2)
    first = Tape("a", [], [], [m("user", "x")])
    store.put(first)
    store.put(Tape("b", [], [], []))
    store.put(first)
    store.put(Tape("c", [], [], []))
    assert [t.lineage for t in store.all()] == ["a", "c"]
