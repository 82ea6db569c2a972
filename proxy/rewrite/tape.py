"""Session tapes: per conversation lineage, what was last sent upstream and the hashes of
the client's own messages of that request; and the pure decision of which tape, if any, a
new request continues.

A request continues a tape only when everything it sent before its new turn matches that
tape's client-side history (the system message compared by its full text, or, for the
volatile rule, as a small change of it), under the same credentials and session, and when
no other conversation could own it as well. Everything else starts a new tape.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Literal

import xxhash

from proxy.core.conversation import Message, frozen_map, thaw
from proxy.rewrite import compaction
from proxy.rewrite.identity import ANONYMOUS, Identity

# At most this many trailing non-assistant messages of the previous request may vanish from
# the next one and still be kept in place as transient context.
TRANSIENT_MAX = 2
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


@dataclass(frozen=True)
class Request:
    """What lineage matching sees of a request: hashes, roles, identity."""

    hashes: tuple[str, ...]
    roles: tuple[str, ...]
    identity: Identity
    messages: tuple[Message, ...]

    @classmethod
    def of(cls, messages: Sequence[Message], identity: Identity) -> Request:
        return cls(tuple(client_hashes(messages)), tuple(m.role for m in messages), identity,
                   tuple(messages))  # fmt: skip

    @property
    def has_system(self) -> bool:
        return bool(self.roles) and self.roles[0] == "system"

    @property
    def first_turn(self) -> bool:
        return "assistant" not in self.roles


Kind = Literal["fresh", "append", "transient", "system", "splice", "compaction"]


@dataclass(frozen=True)
class Lineage:
    """Which tape a request continues and how; for a fresh one, why (``reason``) and how
    far it shared a tape of its own client (``shared``, for the edited-history cause)."""

    kind: Kind
    tape: Tape | None = None
    common: int = 0  # leading client messages shared with the tape's last request
    summary: int | None = None  # index of the compaction summary
    shape: str | None = None
    is_new: tuple[bool, ...] = ()
    shared: int = 0
    reason: str | None = None


def common_prefix(a: Sequence[str], b: Sequence[str]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def alignment(tape_client: Sequence[str], tape_roles: Sequence[str], req: Request,
              start: int = 0) -> tuple[str, int] | None:  # fmt: skip
    """("append" | "transient", common) when the request's messages from ``start`` follow
    the tape's last request: all of it, or all but a short non-assistant tail that followed
    its newest user turn, where the request now has the reply."""
    hashes, roles = req.hashes, req.roles
    common = start + common_prefix(tape_client[start:], hashes[start:])
    if common == len(tape_client) and len(hashes) > common:
        return "append", common
    dropped = tape_roles[common:]
    transient = (
        0 < len(dropped) <= TRANSIENT_MAX
        and all(role not in ("assistant", "tool") for role in dropped)
        and "user" in tape_roles[start:common]
        and common < len(roles)
        and roles[common] == "assistant"
    )
    return ("transient", common) if transient else None


def first_user_index(roles: Sequence[str]) -> int | None:
    return next((i for i, role in enumerate(roles) if role == "user"), None)


def splice_aligned(tape: Tape, req: Request) -> bool:
    """The request is the tape's last request with only its first user message changed,
    plus new messages; at least one message after the first user message is shared."""
    f = first_user_index(tape.client_roles)
    n = len(tape.client)
    hashes = req.hashes
    return (
        f is not None
        and n > f + 1
        and len(hashes) > n
        and list(hashes[:f]) == tape.client[:f]
        and hashes[f] != tape.client[f]
        and list(hashes[f + 1 : n]) == tape.client[f + 1 :]
    )


def kept_messages(tape: Tape, req: Request) -> tuple[list[bool], list[str]]:
    """Which request messages are new to the tape (the others match its last request in
    order), and the hashes of the kept ones (system excluded), plus the tape's relayed
    reply when the request carries it."""
    is_new = compaction.new_in_order(tape.client, req.hashes)
    kept = [h for h, n, r in zip(req.hashes, is_new, req.roles, strict=True)
            if not n and r != "system"]  # fmt: skip
    if tape.reply:
        for i, message in enumerate(req.messages):
            relayed = message.role == "assistant" and text_hash(message.text()) == tape.reply
            if is_new[i] and relayed:
                kept.append("reply:" + tape.reply)
                break
    return is_new, kept


def find_lineage(
    tapes: Sequence[Tape], req: Request, *, volatile: bool, compacting: bool
) -> Lineage:
    """The tape this request continues (pure; ``tapes`` newest last). Rules, in order:

    1. a first-turn request (no assistant message) starts a new conversation;
    2. only tapes of the same principal and session are candidates;
    3. the longest tape whose last request the request extends exactly (or after a
       transient tail) is continued, if the longest such tapes all sent the same;
    4. (volatile) a tape matching all but the system message, when the request's system
       text is new to this client and exactly one tape matches;
    5. (volatile) a tape matching all but the first user message, when exactly one does
       and that message is new to this client;
    6. (compaction) a compacted request tied to exactly one tape by its session or by
       kept messages no other candidate holds.

    Rules 4-6 send the tape's text in place of what the request changed, so they apply
    only inside a named session: without one, anybody sharing the principal could forge
    the rest of the history and read a conversation's system prompt (``needs-session``).
    """
    if req.first_turn:
        return Lineage("fresh", reason="first-turn")
    own = [t for t in tapes if t.belongs_to(req.identity)]
    exact = []
    for tape in own:
        found = alignment(tape.client, tape.client_roles, req)
        if found is not None:
            exact.append((found[1], tape, found[0]))
    if exact:
        best = max(n for n, _, _ in exact)
        top = [(t, k) for n, t, k in exact if n == best]
        if all(t.sent == top[-1][0].sent for t, _ in top):
            tape, kind = top[-1]
            return Lineage(kind, tape, best)  # type: ignore[arg-type]
        return Lineage("fresh", reason="ambiguous")
    shared = max((common_prefix(t.client, req.hashes) for t in own), default=0)
    named = req.identity.session is not None
    if volatile and req.has_system and not any(t.client[:1] == list(req.hashes[:1]) for t in own):
        matches = []
        for tape in own:
            if tape.client_roles[:1] != ["system"]:
                continue
            found = alignment(tape.client, tape.client_roles, req, start=1)
            if found is not None:
                matches.append((found, tape))
        if len(matches) == 1 and not named:
            return Lineage("fresh", shared=shared, reason="needs-session")
        if len(matches) == 1:
            (kind, common), tape = matches[0]
            return Lineage("system", tape, common, reason=kind)
        if matches:
            return Lineage("fresh", shared=shared, reason="ambiguous")
    f = first_user_index(req.roles)
    if volatile and f is not None:
        fresh_first = not any(
            (g := first_user_index(t.client_roles)) is not None and g < len(t.client)
            and t.client[g] == req.hashes[f] for t in own
        )  # fmt: skip
        matches_s = [t for t in own if splice_aligned(t, req)] if fresh_first else []
        if len(matches_s) == 1 and not named:
            return Lineage("fresh", shared=shared, reason="needs-session")
        if len(matches_s) == 1:
            tape = matches_s[0]
            return Lineage("splice", tape, len(tape.client))
        if matches_s:
            return Lineage("fresh", shared=shared, reason="ambiguous")
    if compacting:
        found_c = find_compaction(own, req)
        if found_c is not None and found_c.tape is not None and not named:
            return Lineage("fresh", shared=shared, reason="needs-session")
        if found_c is not None:
            return found_c
    return Lineage("fresh", shared=shared)


def find_compaction(own: Sequence[Tape], req: Request) -> Lineage | None:
    """A compacted request (a summary among its new messages) tied to exactly one tape:
    by a named session (every candidate is then that session's), or by kept messages that
    no other candidate holds."""
    candidates = []
    for tape in own:
        if tape.client[:1] != list(req.hashes[:1]):
            continue
        is_new, kept = kept_messages(tape, req)
        found = compaction.find_summary(
            req.messages, is_new, shorter=len(req.hashes) < len(tape.client)
        )
        if found is not None and is_new[-1]:
            candidates.append((tape, is_new, kept, found))
    if not candidates:
        return None
    if req.identity.session is not None:
        tape, is_new, _, (index, shape) = candidates[-1]
        return Lineage("compaction", tape, 0, index, shape, tuple(is_new))
    owners = []
    for tape, is_new, kept, found in candidates:
        others = {h for t, _, k, _ in candidates if t is not tape for h in k}
        if any(h not in others for h in kept):
            owners.append((tape, is_new, found))
    if len(owners) != 1:
        return Lineage("fresh", reason="compaction-ambiguous")
    tape, is_new, (index, shape) = owners[0]
    return Lineage("compaction", tape, 0, index, shape, tuple(is_new))


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
