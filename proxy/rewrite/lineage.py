"""Which tape, if any, a new request continues: a pure decision over the session tapes
(``proxy.rewrite.tape``), made by the rules of ``LINEAGE_RULES`` tried in order.

A request continues a tape only when everything it sent before its new turn matches that
tape's client-side history (the system message compared by its full text, or, for the
volatile rule, as a small change of it), under the same credentials and session, and when
no other conversation could own it as well. Everything else starts a new tape.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Literal, TypeVar

from proxy.core.conversation import Message
from proxy.rewrite import compaction, volatile
from proxy.rewrite.identity import Identity
from proxy.rewrite.tape import Tape, client_hashes, text_hash

# At most this many trailing non-assistant messages of the previous request may vanish from
# the next one and still be kept in place as transient context.
TRANSIENT_MAX = 2

T = TypeVar("T")


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
    spliced: int | None = None  # a splice: the index of the message the client changed
    transient: int = 0  # a compaction: trailing messages repeated from the last request


def common_prefix(a: Sequence[str], b: Sequence[str]) -> int:
    """How many leading items ``a`` and ``b`` share: slices compared whole (in C), the
    first difference found by halving; a long conversation compares hundreds per tape."""
    a, b = tuple(a), tuple(b)
    lo, hi = 0, min(len(a), len(b))
    if a[:hi] == b[:hi]:
        return hi
    while lo < hi:  # a[:lo] == b[:lo] and a[:hi + 1] != b[:hi + 1]
        mid = (lo + hi + 1) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


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


def context_indices(roles: Sequence[str]) -> list[int]:
    """The messages clients rewrite in place to carry context (a date, a working
    directory, a session name): the first user message, and a system or developer message
    after the first message and before the first reply (Claude Code's environment)."""
    end = next((i for i, role in enumerate(roles) if role == "assistant"), len(roles))
    f = first_user_index(roles)
    return [i for i in range(end)
            if i == f or (i > 0 and roles[i] in ("system", "developer"))]  # fmt: skip


def splice_aligned(tape: Tape, req: Request, f: int) -> bool:
    """The request is the tape's last request with only message ``f`` changed (its role
    kept), plus new messages; at least one message after it is shared."""
    n = len(tape.client)
    hashes = req.hashes
    return (
        n > f + 1
        and len(hashes) > n
        and tape.client_roles[f] == req.roles[f]
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


@dataclass
class Candidates:
    """What the lineage rules look at: the request, the tapes of its own principal and
    session (rule 2: only those are candidates), and which rules are on."""

    tapes: Sequence[Tape]
    req: Request
    volatile: bool
    compacting: bool

    @cached_property
    def own(self) -> list[Tape]:
        return [t for t in self.tapes if t.belongs_to(self.req.identity)]

    @cached_property
    def shared(self) -> int:
        """Leading messages shared with a tape of this client (the edited-history cause)."""
        return max((common_prefix(t.client, self.req.hashes) for t in self.own), default=0)

    @property
    def named(self) -> bool:
        return self.req.identity.session is not None


def first_turn(c: Candidates) -> Lineage | None:
    """Rule 1: a first-turn request (no assistant message) starts a new conversation."""
    return Lineage("fresh", reason="first-turn") if c.req.first_turn else None


def exact_continuation(c: Candidates) -> Lineage | None:
    """Rule 3: the longest tape whose last request the request extends exactly (or after
    a transient tail), if the longest such tapes all sent the same."""
    exact = []
    for tape in c.own:
        found = alignment(tape.client, tape.client_roles, c.req)
        if found is not None:
            exact.append((found[1], tape, found[0]))
    if not exact:
        return None
    best = max(n for n, _, _ in exact)
    top = [(t, k) for n, t, k in exact if n == best]
    if all(t.sent == top[-1][0].sent for t, _ in top):
        tape, kind = top[-1]
        return Lineage(kind, tape, best)  # type: ignore[arg-type]
    return Lineage("fresh", reason="ambiguous")


def only_match(
    c: Candidates, matches: Sequence[T], lineage: Callable[[T], Lineage]
) -> Lineage | None:
    """Rules 4-5: exactly one match is continued, inside a named session only; several
    are ambiguous; none leaves the request to the next rule."""
    if len(matches) == 1 and not c.named:
        return Lineage("fresh", shared=c.shared, reason="needs-session")
    if len(matches) == 1:
        return lineage(matches[0])
    if matches:
        return Lineage("fresh", shared=c.shared, reason="ambiguous")
    return None


def changed_system(c: Candidates) -> Lineage | None:
    """Rule 4 (volatile): a tape matching all but the system message, when the request's
    system text is new to this client."""
    req = c.req
    if not (c.volatile and req.has_system) or any(
        t.client[:1] == list(req.hashes[:1]) for t in c.own
    ):
        return None
    matches = []
    for tape in c.own:
        if tape.client_roles[:1] != ["system"]:
            continue
        found = alignment(tape.client, tape.client_roles, req, start=1)
        if found is not None:
            matches.append((found, tape))

    def lineage(match: tuple[tuple[str, int], Tape]) -> Lineage:
        (kind, common), tape = match
        return Lineage("system", tape, common, reason=kind)

    return only_match(c, matches, lineage)


def is_new_at(c: Candidates, f: int) -> bool:
    """Whether message ``f`` is new to this client: no tape of its own holds it there (the
    first user message: at that tape's own first user message)."""
    first = f == first_user_index(c.req.roles)
    for tape in c.own:
        g = first_user_index(tape.client_roles) if first else f
        if g is not None and g < len(tape.client) and tape.client[g] == c.req.hashes[f]:
            return False
    return True


def changed_context(c: Candidates) -> Lineage | None:
    """Rule 5 (volatile): a tape matching all but one context message (``context_indices``),
    when that message is new to this client."""
    if not c.volatile:
        return None
    for f in context_indices(c.req.roles):
        matches = [t for t in c.own if splice_aligned(t, c.req, f)] if is_new_at(c, f) else []
        found = only_match(c, matches, lambda tape, f=f: Lineage(
            "splice", tape, len(tape.client), spliced=f))  # fmt: skip
        if found is not None:
            return found
    return None


def compacted(c: Candidates) -> Lineage | None:
    """Rule 6 (compaction): a compacted request tied to exactly one tape (``find_compaction``)."""
    if not c.compacting:
        return None
    found = find_compaction(c.own, c.req, c.volatile)
    if found is not None and found.tape is not None and not c.named:
        return Lineage("fresh", shared=c.shared, reason="needs-session")
    return found


LineageRule = Callable[[Candidates], Lineage | None]

# The rules of ``find_lineage``, in the order they are tried: the first answer wins.
LINEAGE_RULES: tuple[tuple[str, LineageRule], ...] = (
    ("first-turn", first_turn),
    ("exact", exact_continuation),
    ("system", changed_system),
    ("splice", changed_context),
    ("compaction", compacted),
)


def find_lineage(
    tapes: Sequence[Tape], req: Request, *, volatile: bool, compacting: bool
) -> Lineage:
    """The tape this request continues (pure; ``tapes`` newest last). Rules, in order
    (``LINEAGE_RULES``; none answering: a fresh tape):

    1. a first-turn request (no assistant message) starts a new conversation;
    2. only tapes of the same principal and session are candidates;
    3. the longest tape whose last request the request extends exactly (or after a
       transient tail) is continued, if the longest such tapes all sent the same;
    4. (volatile) a tape matching all but the system message, when the request's system
       text is new to this client and exactly one tape matches;
    5. (volatile) a tape matching all but one context message (the first user message,
       or a system or developer message before the first reply), when exactly one does and
       that message is new to this client;
    6. (compaction) a compacted request tied to exactly one tape by its session or by
       kept messages no other candidate holds.

    Rules 4-6 send the tape's text in place of what the request changed, so they apply
    only inside a named session: without one, anybody sharing the principal could forge
    the rest of the history and read a conversation's system prompt (``needs-session``).
    """
    candidates = Candidates(tapes, req, volatile, compacting)
    for _, rule in LINEAGE_RULES:
        found = rule(candidates)
        if found is not None:
            return found
    return Lineage("fresh", shared=candidates.shared)


def same_system(tape: Tape, req: Request, volatile_on: bool) -> bool:
    """The request's system message is the tape's, or (volatile rule) differs from the one
    the tape sent only by volatile lines (the move_volatile step then moves them)."""
    if tape.client[:1] == list(req.hashes[:1]):
        return True
    if not (volatile_on and req.has_system and tape.client_roles[:1] == ["system"] and tape.sent):
        return False
    old, new = volatile.line_text(tape.sent[0]), volatile.line_text(req.messages[0])
    change = volatile.changed_lines(old, new)
    return change is not None and volatile.is_volatile_change(new, change[1])


def find_compaction(own: Sequence[Tape], req: Request, volatile_on: bool = False
                    ) -> Lineage | None:  # fmt: skip
    """A compacted request (a summary among its new messages) tied to exactly one tape: in
    a named session that holds no other tape, that one; else the only candidate that keeps
    a message whose text no other conversation of the client sent or was answered with. A
    session may hold several conversations: Claude Code's and Codex's subagents share the
    parent's session and system prompt, and appending the tape that merely looks
    compacted, spoke last, or is the only one with the request's system prompt (a
    subagent's is its parent's, which may have changed since either tape was written)
    would send another conversation upstream."""
    candidates = []
    for tape in own:
        if not same_system(tape, req, volatile_on):
            continue
        is_new, kept = kept_messages(tape, req)
        tail = transient_tail(tape, req, is_new)
        end = len(is_new) - tail
        found = compaction.find_summary(
            req.messages[:end], is_new[:end], shorter=len(req.hashes) < len(tape.client)
        )
        if found is not None and end and is_new[end - 1]:
            is_new[end:] = [True] * tail  # the transient tail goes after the new turn again
            candidates.append((tape, is_new, kept, found, tail))
    if not candidates:
        return None
    if req.identity.session is not None and len(own) == 1:
        tape, is_new, _, (index, shape), tail = candidates[0]
        return Lineage("compaction", tape, 0, index, shape, tuple(is_new), transient=tail)
    owners = [
        (tape, is_new, found, tail)
        for tape, is_new, kept, found, tail in candidates
        if keeps_its_own(tape, req, is_new, kept, [t for t in own if t is not tape])
    ]
    if len(owners) != 1:
        return Lineage("fresh", reason="compaction-ambiguous")
    tape, is_new, (index, shape), tail = owners[0]
    return Lineage("compaction", tape, 0, index, shape, tuple(is_new), transient=tail)


def keeps_its_own(tape: Tape, req: Request, is_new: Sequence[bool], kept: Sequence[str],
                  others: Sequence[Tape]) -> bool:  # fmt: skip
    """Whether the request keeps a message of ``tape``'s conversation that none of the
    ``others`` holds, neither as it went upstream (a rule may have changed it: the
    volatile rule appends the date to a user message) nor as their client sent it."""
    sent = {key for t in others for key in texts_of(t)}
    client = {key for t in others for key in t.client}
    if "reply:" + tape.reply in kept and tape.reply not in sent:
        return True
    return any(not new and m.role != "system" and m.text().strip()
               and text_hash(m.text()) not in sent and key not in client
               for m, key, new in zip(req.messages, req.hashes, is_new, strict=True))  # fmt: skip


def texts_of(tape: Tape) -> set[str]:
    """The text hashes of every message a tape's conversation sent upstream, and of the
    reply relayed to it."""
    keys = {text_hash(m.text()) for m in tape.sent if m.role != "system"}
    return keys | {tape.reply} if tape.reply else keys


def transient_tail(tape: Tape, req: Request, is_new: Sequence[bool]) -> int:
    """How many of the request's last messages repeat the tape's last request's trailing
    non-assistant messages (OpenClaw's internal context, identical in every request)."""
    tail, last = 0, set(tape.client[-TRANSIENT_MAX:])
    while tail < min(TRANSIENT_MAX, len(is_new) - 1):
        i = len(is_new) - 1 - tail
        if is_new[i] or req.roles[i] == "assistant" or req.hashes[i] not in last:
            break
        tail += 1
    return tail
