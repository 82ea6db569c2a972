"""Session tapes: per conversation lineage, what was last sent upstream and how the
client's own messages line up with it.

A new request is aligned against the tapes by message hashes; history the client sent
before maps onto the tape as sent, so a rewrite made in turn k is reproduced byte for byte
in turn k+1. Tapes are bounded in number and age and persisted through a callback (LMDB).
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import xxhash

from proxy.conversation import Message, frozen_map, thaw

# At most this many trailing non-assistant messages of the previous request may vanish from
# the next one and still be kept in place as transient context.
TRANSIENT_MAX = 2


def message_hash(message: Message) -> str:
    data = {"role": message.role, "content": thaw(message.content), "extra": thaw(message.extra)}
    raw = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return xxhash.xxh3_64_hexdigest(raw.encode("utf-8", "surrogatepass"))


SYSTEM_SLOT = "system"


def client_hashes(messages: Sequence[Message]) -> list[str]:
    """Message hashes for alignment; a leading system message aligns by position, since
    its changes are judged by the volatile rule (a volatile part, or a new system prompt)."""
    out = [message_hash(m) for m in messages]
    if messages and messages[0].role == "system":
        out[0] = SYSTEM_SLOT
    return out


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
    system_stable: str | None = None  # the client's system text last time, markers removed
    volatile: str = ""  # volatile text the model has been given most recently
    tools: list[str] = field(default_factory=list)  # canonical tools, in the order sent
    first_user: str = ""  # the client's first user message text last time
    updated: float = field(default_factory=time.time)

    def dump(self) -> bytes:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["sent"] = [to_json(m) for m in self.sent]
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def load(cls, raw: bytes) -> Tape:
        data = json.loads(raw)
        data["sent"] = [from_json(m) for m in data["sent"]]
        return cls(**data)


@dataclass(frozen=True)
class Alignment:
    kind: str  # "append", "transient" or "diverged"
    common: int  # leading client messages shared with the previous request


def common_prefix(a: Sequence[str], b: Sequence[str]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def align(tape: Tape, hashes: Sequence[str], roles: Sequence[str]) -> Alignment:
    """How the new request's messages follow the previous request's: an append; an append
    after dropping the previous request's trailing context (a short non-assistant tail
    that followed its newest user turn, where the new request now has the reply); or not."""
    common = common_prefix(tape.client, hashes)
    dropped = tape.client_roles[common:]
    if not dropped:
        return Alignment("append", common)
    transient = (
        len(dropped) <= TRANSIENT_MAX
        and all(role not in ("assistant", "tool") for role in dropped)
        and common >= 1
        and "user" in tape.client_roles[:common]
        and common < len(roles)
        and roles[common] == "assistant"
    )
    return Alignment("transient" if transient else "diverged", common)


def first_user_index(roles: Sequence[str]) -> int | None:
    return next((i for i, role in enumerate(roles) if role == "user"), None)


def splice_match(tape: Tape, hashes: Sequence[str]) -> bool:
    """The new request is the previous one with only its first user message changed, plus
    new messages: the lineage is established by the history after that message (at
    least one message of it), so a new conversation is never taken for a splice."""
    f = first_user_index(tape.client_roles)
    n = len(tape.client)
    return (
        f is not None
        and n > f + 1
        and len(hashes) > n
        and list(hashes[:f]) == tape.client[:f]
        and hashes[f] != tape.client[f]
        and list(hashes[f + 1 : n]) == tape.client[f + 1 :]
    )


class TapeStore:
    """Tapes by lineage, least recently used first out; ``persist(lineage, dump | None)``
    mirrors every change to durable storage, ``dump`` serializing the tape when called
    (on the store's writer thread)."""

    def __init__(
        self,
        max_tapes: int = 512,
        max_age: float = 7 * 86400,
        persist: Callable[[str, Callable[[], bytes] | None], None] | None = None,
    ) -> None:
        self.max_tapes = max_tapes
        self.max_age = max_age
        self.persist = persist
        self._tapes: OrderedDict[str, Tape] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tapes)

    def get(self, lineage: str) -> Tape | None:
        return self._tapes.get(lineage)

    def restore(self, raw_tapes: Sequence[bytes]) -> None:
        """Load persisted tapes (oldest first), skipping unreadable ones."""
        loaded = []
        for raw in raw_tapes:
            try:
                loaded.append(Tape.load(raw))
            except (ValueError, TypeError, KeyError):
                continue
        for tape in sorted(loaded, key=lambda t: t.updated):
            self._tapes[tape.lineage] = tape
        self._bound(time.time())

    def put(self, tape: Tape) -> None:
        tape.updated = time.time()
        self._tapes[tape.lineage] = tape
        self._tapes.move_to_end(tape.lineage)
        if self.persist is not None:
            self.persist(tape.lineage, tape.dump)
        self._bound(tape.updated)

    def _bound(self, now: float) -> None:
        while self._tapes:
            lineage, oldest = next(iter(self._tapes.items()))
            if len(self._tapes) <= self.max_tapes and now - oldest.updated <= self.max_age:
                break
            del self._tapes[lineage]
            if self.persist is not None:
                self.persist(lineage, None)

    def best(self, hashes: Sequence[str], system: str | None) -> tuple[Tape | None, int]:
        """The tape sharing the most leading client messages (newest first on ties); with
        none sharing more than the system message, the newest tape with the same system
        stable text (a compacted request keeps its system, its history is gone)."""
        best: Tape | None = None
        shared = 0
        for tape in reversed(self._tapes.values()):
            n = common_prefix(tape.client, hashes)
            if n > shared:
                best, shared = tape, n
        if best is not None and shared >= 2:
            return best, shared
        for tape in reversed(self._tapes.values()):
            if splice_match(tape, hashes):
                return tape, len(tape.client) - 1
        if system is not None:
            for tape in reversed(self._tapes.values()):
                if tape.system_stable == system:
                    return tape, shared
        return best, shared
