"""The one canonical request type that every dialect translates to and from.

Rewrite rules and routing see only this type, so they never care which API a client speaks.
Everything a dialect does not understand is kept verbatim (``Message.extra``,
``Conversation.params``, ``Conversation.extra``) so that rendering back loses nothing.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
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


class MessageMemo:
    """Messages parsed before, by the JSON object they came from (``memo_key``): an agent
    sends its whole conversation every turn, so all but the newest messages were parsed,
    checked and hashed on an earlier turn, and a hit is a message equal to what parsing
    would give. Bounded by the characters of the keys held, oldest out; one event-loop
    thread uses it."""

    def __init__(self, max_chars: int = 32 << 20) -> None:
        self.max_chars = max_chars
        self._items: OrderedDict[MemoKey, tuple[Message, int]] = OrderedDict()
        self._chars = 0

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
