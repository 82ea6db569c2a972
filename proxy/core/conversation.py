"""The one canonical request type that every dialect translates to and from.

Rewrite rules and routing see only this type, so they never care which API a client speaks.
Everything a dialect does not understand is kept verbatim (``Message.extra``,
``Conversation.params``, ``Conversation.extra``) so that rendering back loses nothing.
"""

from __future__ import annotations

import operator
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
    raw: tuple[Any, ...] = ()  # the decoded items (``MessageMemo.decode`` hands them on)
    nan_free: bool = False  # none of them holds NaN: their JSON decodes back to them


# A body whose message list is shorter decodes whole (orjson is quick there).
RESUME_BYTES = 16 << 10
# What finds a kept list in a new body (then compared whole).
NEEDLE = 64


def has_nan(value: Any) -> bool:
    """Whether a decoded value holds NaN or an infinity (the stdlib's decoding lets them in;
    orjson writes them as null, so such a list's JSON is not its value)."""
    if isinstance(value, float):
        return value != value or value in (float("inf"), float("-inf"))
    if isinstance(value, dict):
        return any(has_nan(v) for v in value.values())
    if isinstance(value, list):
        return any(has_nan(v) for v in value)
    return False


def spliced(raw: bytes, listed: Listed, at: int) -> dict[str, Any] | None:
    """``raw`` decoded, where ``listed``'s JSON less its closing bracket lies at ``at``: the
    kept items, then what follows them decoded. The list is cut out and a marker put first
    in its place; the body is decoded twice, with 0 and with 1 as the marker, and only a
    top-level key whose value starts with the marker in both (the value at ``at``, not one
    a later duplicate key replaced) takes the kept items. None where anything differs."""
    n = len(listed.data) - 1
    rest = raw[at + n :]
    if rest[:1] == b",":
        rest = rest[1:]
        if rest.lstrip()[:1] == b"]":
            return None  # a trailing comma: not JSON, as the whole body's decoding says
        joint = b","
    elif rest[:1] == b"]":
        joint = b""
    else:
        return None
    head = memoryview(raw)[:at]
    try:
        zero = orjson.loads(b"".join((head, b"[0", joint, rest)))
        one = orjson.loads(b"".join((head, b"[1", joint, rest)))
    except orjson.JSONDecodeError:
        return None
    if not isinstance(zero, dict) or not isinstance(one, dict):
        return None
    keys = [k for k, v in zero.items() if marked(v, 0) and marked(one.get(k), 1)]
    if len(keys) != 1:
        return None
    zero[keys[0]] = [*listed.raw, *zero[keys[0]][1:]]
    return zero


def marked(value: Any, marker: int) -> bool:
    return type(value) is list and bool(value) and type(value[0]) is int and value[0] == marker


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
        nan_free = True
        if known is not None:
            out, nulls = list(known.messages), list(known.nulls)
            for i in nulls:
                out[i] = self.one(i, raw[i], parse)
            # the known items themselves (a resumed decoding) are known to be free of NaN
            if not (known.nan_free and all(map(operator.is_, known.raw, raw))):
                nan_free = not any(has_nan(raw[i]) for i in nulls)
        for i in range(len(out), len(raw)):
            item = raw[i]
            out.append(self.one(i, item, parse))
            if data and b"null" in orjson.dumps(item):
                nulls.append(i)
                nan_free = nan_free and not has_nan(item)
        messages = tuple(out)
        if data and len(data) <= self.max_chars // 4:
            self._keep(Listed(data, tuple(nulls), messages, tuple(raw), nan_free))
        return messages

    def decode(self, raw: bytes) -> Any | None:
        """``raw`` as ``orjson.loads`` gives it, without decoding a recent list's messages
        again where the body holds that list's JSON byte for byte (an agent's next turn:
        the same messages, then more; ``spliced``); None where no recent list is there.

        Only the client's own bytes decide: the items handed on are equal to what decoding
        those bytes gives (a list's JSON is kept only as orjson writes its items, and one
        whose items hold NaN is passed over), so no other request's content can enter."""
        if len(raw) < RESUME_BYTES:
            return None
        found: dict[bytes, int] = {}
        best: tuple[Listed, int] | None = None
        for listed in reversed(self._lists[-8:]):
            n = len(listed.data) - 1
            if n < RESUME_BYTES or n >= len(raw) or not listed.raw:
                continue
            if best is not None and n <= len(best[0].data) - 1:
                continue
            needle = listed.data[:NEEDLE]
            at = found.get(needle)
            if at is None:
                at = found[needle] = raw.find(needle)
            # startswith compares bytes as memcmp does (memoryview's == goes item by item)
            if at >= 0 and raw.startswith(memoryview(listed.data)[:n], at):
                best = (listed, at)
        if best is None or not best[0].nan_free:
            return None
        return spliced(raw, *best)

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
