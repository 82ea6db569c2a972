"""Session tapes: per conversation lineage, what was last sent upstream and the hashes of
the client's own messages of that request. Which tape a new request continues is decided in
``proxy.rewrite.lineage``.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

import xxhash

from proxy.core.conversation import Message, frozen_map, thaw
from proxy.rewrite.identity import ANONYMOUS, Identity

# Tapes hold text: bounded in number and in bytes (the text of their messages).
MAX_TAPE_BYTES = 256 * 1024 * 1024


def message_hash(message: Message) -> str:
    """A message's identity (see ``hash_of``), computed once per message object."""
    known = message.derived.get("hash")
    if known is None:
        known = message.derived["hash"] = hash_of(message)
    return known


def hash_of(message: Message) -> str:
    """A message's identity. Most messages are a role and a string: those are hashed as such
    (no JSON round trip; a long conversation hashes hundreds per request); any other is
    hashed as its canonical JSON, which starts with ``{`` and so never equals the former."""
    if isinstance(message.content, str) and not message.extra:
        raw = f"{message.role}\x00{message.content}"
        return xxhash.xxh3_64_hexdigest(raw.encode("utf-8", "surrogatepass"))
    extra = message.extra
    if isinstance(message.content, str) and all(isinstance(v, str) for v in extra.values()):
        # a tool result ({"tool_call_id": ...}): the same canonical JSON, written directly
        fields = ",".join(f"{STRING(k)}:{STRING(v)}" for k, v in sorted(extra.items()))
        content, role = STRING(message.content), STRING(message.role)
        raw = f'{{"content":{content},"extra":{{{fields}}},"role":{role}}}'
    else:
        raw = CANONICAL.encode({"role": message.role, "content": message.content, "extra": extra})
    return xxhash.xxh3_64_hexdigest(raw.encode("utf-8", "surrogatepass"))


def _plain(value: Any) -> Any:
    """The read-only mappings of the canonical type, for the JSON encoder (no deep copy)."""
    if isinstance(value, MappingProxyType | Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# A JSON string as the encoder below writes it (text as is).
STRING = json.encoder.encode_basestring
# Sorted keys, no spaces, text as is: one encoder for every message hash.
CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                             default=_plain)  # fmt: skip


def text_hash(text: str) -> str:
    return xxhash.xxh3_64_hexdigest(text.strip().encode("utf-8", "surrogatepass"))


def client_hashes(messages: Sequence[Message]) -> list[str]:
    """One hash per message, the system message included by its full text."""
    return [message_hash(m) for m in messages]


def to_json(message: Message) -> dict[str, Any]:
    return {"role": message.role, "content": thaw(message.content), "extra": thaw(message.extra)}


def from_json(data: dict[str, Any]) -> Message:
    return Message(role=data["role"], content=data["content"], extra=frozen_map(data["extra"]))


@dataclass
class Tape:
    lineage: str
    client: list[str]  # hashes of the client's messages in the last request
    client_roles: list[str]
    sent: list[Message]  # the messages sent upstream for it
    principal: str = ANONYMOUS
    session: str | None = None
    told: str = ""  # the volatile system lines the model has been given most recently
    tools: list[str] = field(default_factory=list)  # canonical tools, in the order sent
    first_user: str = ""  # the client's first user message text last time
    reply: str = ""  # hash of the reply relayed for the last request
    issued: str = ""  # hash of the session key kvproxy issued for it (x-kvproxy-session)
    updated: float = field(default_factory=time.time)

    def dump(self) -> bytes:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["sent"] = [to_json(m) for m in self.sent]
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode(
            "utf-8", "surrogatepass"
        )

    @classmethod
    def load(cls, raw: bytes) -> Tape:
        data = json.loads(raw.decode("utf-8", "surrogatepass"))
        data["sent"] = [from_json(m) for m in data["sent"]]
        return cls(**data)

    def belongs_to(self, identity: Identity) -> bool:
        """Same principal, and the same session: the one the client named, or the key
        kvproxy issued for this tape, echoed by the client."""
        if self.principal != identity.principal:
            return False
        if self.session == identity.session:
            return True
        return self.session is None and bool(self.issued) and self.issued == identity.session

    @property
    def size(self) -> int:
        return sum(len(m.text()) for m in self.sent) + 64 * len(self.client)

    @property
    def sent_system(self) -> str | None:
        first = self.sent[0] if self.sent else None
        if first is not None and first.role == "system" and isinstance(first.content, str):
            return first.content
        return None


class TapeStore:
    """Tapes by lineage, least recently used first out, bounded in number, age and bytes;
    ``persist(lineage, dump | None)`` mirrors every change to durable storage (None: the
    tapes live in memory only), ``dump`` serializing the tape when called."""

    def __init__(
        self,
        max_tapes: int = 512,
        max_age: float = 7 * 86400,
        persist: Callable[[str, Callable[[], bytes] | None], None] | None = None,
        max_bytes: int = MAX_TAPE_BYTES,
    ) -> None:
        self.max_tapes = max_tapes
        self.max_age = max_age
        self.max_bytes = max_bytes
        self.persist = persist
        self._tapes: OrderedDict[str, Tape] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._tapes)

    def get(self, lineage: str) -> Tape | None:
        return self._tapes.get(lineage)

    def all(self) -> list[Tape]:
        """Every tape, least recently used first."""
        return list(self._tapes.values())

    def restore(self, raw_tapes: Sequence[bytes]) -> None:
        """Load persisted tapes (oldest first), skipping unreadable ones."""
        loaded = []
        for raw in raw_tapes:
            try:
                loaded.append(Tape.load(raw))
            except (ValueError, TypeError, KeyError, UnicodeError):
                continue
        for tape in sorted(loaded, key=lambda t: t.updated):
            self._insert(tape)
        self._bound(time.time())

    def _insert(self, tape: Tape) -> None:
        old = self._tapes.pop(tape.lineage, None)
        if old is not None:
            self._bytes -= old.size
        self._tapes[tape.lineage] = tape
        self._bytes += tape.size

    def put(self, tape: Tape) -> None:
        tape.updated = time.time()
        self._insert(tape)
        if self.persist is not None:
            self.persist(tape.lineage, tape.dump)
        self._bound(tape.updated)

    def _bound(self, now: float) -> None:
        while self._tapes:
            lineage, oldest = next(iter(self._tapes.items()))
            within = len(self._tapes) <= self.max_tapes and self._bytes <= self.max_bytes
            if within and now - oldest.updated <= self.max_age:
                break
            del self._tapes[lineage]
            self._bytes -= oldest.size
            if self.persist is not None:
                self.persist(lineage, None)
