"""The one canonical request type that every dialect translates to and from.

Rewrite rules and routing see only this type, so they never care which API a client speaks.
Everything a dialect does not understand is kept verbatim (``Message.extra``,
``Conversation.params``, ``Conversation.extra``) so that rendering back loses nothing.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Literal

import orjson

Kind = Literal["chat", "completion"]

EMPTY: Mapping[str, Any] = MappingProxyType({})


def frozen_map(data: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """A read-only view of a copy, so a parsed body cannot be mutated behind our back."""
    return MappingProxyType(dict(data)) if data else EMPTY


@dataclass(frozen=True)
class Message:
    """One chat message. ``content`` is a string, a list of content parts, or None."""

    role: str
    content: Any = None
    extra: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
    # Values computed from the message alone (its tape hash), kept with it: a message
    # parsed again from an identical object is the same object (``MessageMemo``). Not
    # copied by ``dataclasses.replace`` (not an init field), not compared.
    derived: dict[str, Any] = field(default_factory=dict, init=False, repr=False,
                                    compare=False)  # fmt: skip

    @classmethod
    def make(cls, role: str, content: Any = None, **extra: Any) -> Message:
        return cls(role=role, content=content, extra=frozen_map(extra))

    def text(self) -> str:
        """The message's text, content parts joined; images and other parts are skipped."""
        if isinstance(self.content, str):
            return self.content
        if isinstance(self.content, list):
            return "".join(
                part.get("text", "")
                for part in self.content
                if isinstance(part, Mapping) and part.get("type") == "text"
            )
        return ""


@dataclass(frozen=True)
class Conversation:
    """A request in canonical form.

    ``params`` holds generation parameters under their OpenAI names (the lingua franca that
    llama-server speaks too), plus any field the client sent that no rule needs to see.
    ``extra`` holds fields that only mean something in the client's own dialect
    (ollama's ``keep_alive``, say); they go back out when the upstream speaks that dialect.
    """

    kind: Kind
    model: str | None = None
    messages: tuple[Message, ...] = ()
    prompt: Any = None
    tools: tuple[Mapping[str, Any], ...] | None = None
    stream: bool = False
    params: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
    extra: Mapping[str, Any] = field(default_factory=lambda: EMPTY)

    def with_params(self, **params: Any) -> Conversation:
        return replace(self, params=frozen_map({**self.params, **params}))


def thaw(value: Any) -> Any:
    """Plain JSON-serialisable copies of the read-only mappings kept in the canonical type.
    Scalars first, and the concrete mapping types before the (slow) ``Mapping`` ABC check:
    every request thaws every message of its conversation."""
    if value is None or isinstance(value, str | int | float):
        return value
    if isinstance(value, dict | MappingProxyType):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [thaw(v) for v in value]
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    return value


MemoKey = bytes | str


def memo_key(item: dict[str, Any]) -> MemoKey:
    """A decoded JSON object's memo key: its compact JSON as orjson writes it (equal only
    for an equal JSON value: 1, 1.0 and true differ, key order counts; a few times quicker
    than ``repr``), else its ``repr``. orjson writes NaN and the infinities (which only the
    stdlib's decoding lets in) as null, so a key with a value other than a string that
    holds ``null`` takes the repr, and so does a value orjson refuses (an integer past 64
    bits, a lone surrogate)."""
    try:
        key = orjson.dumps(item)
    except TypeError:
        return repr(item)
    for value in item.values():
        if type(value) is not str:
            return repr(item) if b"null" in key else key
    return key


def key_size(key: MemoKey) -> int:
    return len(key)


@dataclass(frozen=True)
class Listed:
    """A message list parsed before: its compact JSON, which of its messages' JSON holds
    ``null`` (written for NaN too: looked up on their own), and the messages."""

    data: bytes
    nulls: tuple[int, ...]
    messages: tuple[Message, ...]


Parse = Callable[[int, dict[str, Any]], Message]


class MessageMemo:
    """Messages parsed before, by the JSON object they came from (``memo_key``): an agent
    sends its whole conversation every turn, so all but the newest messages were parsed,
    checked and hashed on an earlier turn, and a hit is a message equal to what parsing
    would give. Bounded by the characters of the keys held, oldest out; one event-loop
    thread uses it.

    Whole lists too (``messages``): a list whose compact JSON starts with a recent list's
    (the same messages, then more) takes that list's messages without a key per message;
    a message whose JSON holds ``null`` is looked up on its own even then, since NaN is
    written as null too."""

    LISTS = 32

    def __init__(self, max_chars: int = 32 << 20) -> None:
        self.max_chars = max_chars
        self._items: OrderedDict[MemoKey, tuple[Message, int]] = OrderedDict()
        self._chars = 0
        self._lists: list[Listed] = []  # newest last

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: MemoKey) -> Message | None:
        found = self._items.get(key)
        if found is None:
            return None
        self._items.move_to_end(key)
        return found[0]

    def put(self, key: MemoKey, message: Message) -> None:
        size = key_size(key)
        if size > self.max_chars // 16 or key in self._items:
            return
        self._items[key] = (message, size)
        self._chars += size
        while self._chars > self.max_chars:
            _, (_, old) = self._items.popitem(last=False)
            self._chars -= old

    def messages(self, raw: list[Any], parse: Parse) -> tuple[Message, ...]:
        """``parse(i, item)`` of every item, the ones a recent list held taken from it."""
        try:
            data = orjson.dumps(raw)
        except TypeError:
            data = b""
        known = self._extended(data) if data else None
        out: list[Message] = []
        nulls: list[int] = []
        if known is not None:
            out, nulls = list(known.messages), list(known.nulls)
            for i in nulls:
                out[i] = self.one(i, raw[i], parse)
        for i in range(len(out), len(raw)):
            item = raw[i]
            out.append(self.one(i, item, parse))
            if data and b"null" in orjson.dumps(item):
                nulls.append(i)
        messages = tuple(out)
        if data and len(data) <= self.max_chars // 4:
            self._keep(Listed(data, tuple(nulls), messages))
        return messages

    def one(self, i: int, item: Any, parse: Parse) -> Message:
        """A message by its own key, parsed (and kept) if new."""
        if not isinstance(item, dict):
            return parse(i, item)
        key = memo_key(item)
        known = self.get(key)
        if known is not None:
            return known
        message = parse(i, item)
        self.put(key, message)
        return message

    def _extended(self, data: bytes) -> Listed | None:
        """The newest recent list whose messages ``data`` starts with, all of them."""
        for listed in reversed(self._lists):
            n = len(listed.data) - 1  # without its closing bracket (a view: no copy)
            if data.startswith(memoryview(listed.data)[:n]) and data[n : n + 1] in (b",", b"]"):
                return listed
        return None

    @staticmethod
    def _within(new: bytes, old: bytes) -> bool:
        """Whether list ``new`` extends (or is) list ``old``: compared without copies."""
        return len(old) <= len(new) and new.startswith(memoryview(old)[:-1])

    def _keep(self, listed: Listed) -> None:
        """Newest last; a list the new one extends goes; at most ``LISTS`` lists and a
        quarter of ``max_chars`` in bytes."""
        new = listed.data
        kept = [x for x in self._lists if not self._within(new, x.data)]
        kept = [*kept[-(self.LISTS - 1) :], listed]
        size = sum(len(x.data) for x in kept)
        while size > self.max_chars // 4 and len(kept) > 1:
            size -= len(kept.pop(0).data)
        self._lists = kept
