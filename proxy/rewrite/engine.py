"""The rewrite pipeline: a client's chat request in, the cache-stable request out.

Each rule is a step in ``STEPS``: it takes the planning state and returns a decision
(kept or changed, why, and the next state). ``--rewrite`` names entries of that table.
After the last step the contract (``proxy.rewrite.contract``) is checked; a plan that fails
it, or a rule that could not be applied in full, sends the client's request as it came.
``Rewriter.plan`` only reads the tapes; ``Rewriter.commit`` records what was sent.
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from proxy.core.cause import MissCause
from proxy.core.conversation import Conversation, Message
from proxy.core.log import get_logger
from proxy.rewrite import compaction, contract, summarizer, tools, volatile
from proxy.rewrite.identity import Identity, digest
from proxy.rewrite.lineage import Lineage, Request, find_lineage, first_user_index
from proxy.rewrite.tape import Tape, TapeStore, text_hash

log = get_logger("kvproxy.rewrite")


@dataclass(frozen=True)
class RewriteConfig:
    """Which rules run (``--rewrite``), and the operator's volatile patterns."""

    rules: frozenset[str] = frozenset(("tape", "volatile", "compaction", "tools"))
    patterns: tuple[re.Pattern[str], ...] = ()
    reserve_tokens: int = 1024  # context left for the reply when appending a compaction

    @classmethod
    def parse(cls, spec: str, patterns: Sequence[str] = (), reserve: int = 1024) -> RewriteConfig:
        """``all``, ``off``, or a comma list of rules (``-rule`` removes one from all,
        ``+rule`` or ``all,rule`` adds an opt-in one)."""
        spec = spec.strip()
        if spec in ("", "all", "on"):
            rules = set(DEFAULT)
        elif spec == "off":
            rules = set()
        else:
            parts = [p.strip() for p in spec.split(",") if p.strip()]
            rules = set(DEFAULT) if all(p[0] in "-+" for p in parts) else set()
            if "all" in parts:
                parts.remove("all")
                rules |= DEFAULT
            for part in parts:
                name = part.lstrip("-+")
                if name not in RULES:
                    raise ValueError(f"unknown rewrite rule {name!r}; rules: {', '.join(RULES)}")
                (rules.discard if part.startswith("-") else rules.add)(name)
        return cls(frozenset(rules), tuple(re.compile(p, re.S) for p in patterns), reserve)


@dataclass(frozen=True)
class State:
    """What planning knows so far. ``messages`` is what would go upstream; blocks for the
    newest user turn are collected and placed once, at or after ``new_start``."""

    conv: Conversation  # the client's request
    request: Request
    system: str | None  # the client's system text, when it is a plain string
    lineage: Lineage
    messages: tuple[Message, ...]
    new_start: int = 0
    blocks: tuple[str, ...] = ()
    told: str = ""
    tools: tuple[Mapping, ...] | None = None
    tool_keys: tuple[str, ...] = ()
    applied: tuple[str, ...] = ()
    cause: MissCause | None = None
    skipped: str | None = None  # a rule that could not be applied in full, and why
    learned: tuple[str, tuple[str, ...] | None] | None = None  # (system, stable) to learn
    summary: summarizer.Match | None = None  # a summarizer call served from its conversation

    @property
    def tape(self) -> Tape | None:
        return self.lineage.tape


@dataclass(frozen=True)
class Decision:
    rule: str
    changed: bool
    why: str
    state: State


@dataclass(frozen=True)
class Context:
    config: RewriteConfig
    tapes: Sequence[Tape]
    templates: volatile.Templates

    def on(self, rule: str) -> bool:
        return rule in self.config.rules


Step = Callable[[State, Context], Decision]


def fresh_state(state: State, cause: MissCause | None, reason: str) -> State:
    """Back to the client's own messages, as a new conversation."""
    return replace(state, lineage=Lineage("fresh", reason=reason), messages=state.conv.messages,
                   new_start=0, blocks=(), applied=(), cause=cause)  # fmt: skip


def summarize_from_tape(state: State, ctx: Context) -> Decision:
    """(opt-in) A summarizer call whose transcript is exactly one conversation of this
    session: that conversation as its tape sent it, then one user message with the
    summarizer's system text and instruction, in place of whatever the rules before it
    planned (a summarizer call is a first turn: they only learn from it)."""
    if not ctx.on("summarizer"):
        return Decision("summarizer", False, "summarizer off", state)
    identity = state.request.identity
    found = summarizer.find(state.conv, ctx.tapes, identity)
    if found is None:
        return Decision("summarizer", False, "no summarizer call", state)
    if isinstance(found, str):
        return Decision("summarizer", False, found, state)
    if identity.session is None:
        cause = MissCause("needs-session", reason="name the session to summarize from cache")
        return Decision("summarizer", False, "needs-session", replace(state, cause=cause))
    conv = state.conv
    return Decision("summarizer", True, f"transcript of {found.shape.name}", replace(
        state, messages=found.messages(), summary=found, tools=conv.tools,
        tool_keys=tuple(tools.canonical(t) for t in conv.tools or ()), blocks=(), told="",
        lineage=Lineage("fresh", reason="summarizer"), cause=None, learned=None,
        applied=(f"summarizer:{found.shape.name}",)))  # fmt: skip


def continue_tape(state: State, ctx: Context) -> Decision:
    """Which conversation this request continues (``proxy.rewrite.lineage.find_lineage``), and
    what the slot holds for it: the tape's messages, then the client's new ones."""
    if not ctx.on("tape"):
        return Decision("tape", False, "tapes off", state)
    lineage = find_lineage(ctx.tapes, state.request, volatile=ctx.on("volatile"),
                           compacting=ctx.on("compaction"))  # fmt: skip
    tape = lineage.tape
    if tape is None:
        cause = None
        if lineage.shared > 1 and lineage.reason is None:
            cause = MissCause("edited-history", message=lineage.shared)
        elif lineage.reason == "needs-session":
            cause = MissCause(
                "needs-session",
                message=lineage.shared,
                reason="name the session (x-session-id) to keep its cache",
            )
        return Decision("tape", False, lineage.reason or "new conversation",
                        replace(state, lineage=lineage, cause=cause))  # fmt: skip
    if lineage.kind == "compaction":
        return Decision("tape", False, "compacted", replace(state, lineage=lineage))
    start = len(tape.client) if lineage.kind == "splice" else lineage.common
    messages = (*tape.sent, *state.conv.messages[start:])
    applied = ("transient",) if "transient" in (lineage.kind, lineage.reason) else ()
    state = replace(state, lineage=lineage, messages=messages, new_start=len(tape.sent),
                    applied=applied)  # fmt: skip
    return Decision("tape", True, lineage.kind, state)


def append_compaction(state: State, ctx: Context) -> Decision:
    """A compaction summary goes after what the slot holds, before the newest user turn."""
    lineage, tape = state.lineage, state.tape
    if lineage.kind != "compaction" or tape is None or lineage.summary is None:
        return Decision("compaction", False, "not compacted", state)
    conv = state.conv
    # a changed system message stays as the slot holds it: move_volatile moves its lines
    kept_system = 0 if state.request.has_system else -1
    new = [
        m
        for i, m in enumerate(conv.messages)
        if lineage.is_new[i] and i not in (lineage.summary, kept_system)
    ]
    appended = compaction.append_order(new, conv.messages[lineage.summary], lineage.transient)
    return Decision("compaction", True, f"summary ({lineage.shape})", replace(
        state, messages=(*tape.sent, *appended), new_start=len(tape.sent),
        applied=(*state.applied, f"compaction:{lineage.shape}")))  # fmt: skip


def move_volatile(state: State, ctx: Context) -> Decision:
    """Changed system lines (and a changed first user message) go to the newest user turn;
    the system message stays as the slot holds it."""
    if not ctx.on("volatile"):
        return Decision("volatile", False, "volatile off", state)
    tape = state.tape
    if tape is None:
        return fresh_volatile(state, ctx)
    blocks: list[str] = []
    told = tape.told
    if state.system is not None and tape.sent_system is not None:
        split = volatile.split_against(tape.sent_system, state.system, ctx.config.patterns)
        if split is None:
            cause = MissCause("system-mutation", message=0)
            return fresh_volatile(fresh_state(state, cause, "system changed"), ctx)
        if split.told != tape.told:
            blocks.append(volatile.context_block(split.added, split.removed))
            told = split.told
    if state.lineage.kind == "splice":
        block = spliced_block(state, tape)
        if block is None:
            f = state.lineage.spliced
            return fresh_volatile(
                fresh_state(state, MissCause("edited-history", message=f), "edited"), ctx
            )
        blocks.append(block)
    if not blocks:
        return Decision("volatile", False, "nothing new", replace(state, told=told))
    return Decision("volatile", True, "moved to the newest turn",
                    replace(state, blocks=tuple(blocks), told=told,
                            applied=(*state.applied, "volatile")))  # fmt: skip


def spliced_block(state: State, tape: Tape) -> str | None:
    """The changed lines of the context message the client rewrote in place, as a block
    for the newest turn (the slot keeps the message as it holds it); None when the change
    is no volatile part of it (a new text: an edit)."""
    f = state.lineage.spliced
    assert f is not None
    message = state.conv.messages[f]
    new_text = volatile.line_text(message)
    kept = tape.sent[f].content if f < len(tape.sent) else None
    if not (isinstance(kept, str) and isinstance(message.content, str)):
        return None
    first = f == first_user_index(state.request.roles)
    change = volatile.changed_lines(tape.first_user if first else kept, new_text)
    if change is None or not volatile.is_volatile_change(new_text, change[1]):
        return None
    opening = volatile.FIRST_USER_OPEN if first else volatile.CONTEXT_OPENS[message.role]
    return volatile.context_block(change[1], opening=opening)


def fresh_volatile(state: State, ctx: Context) -> Decision:
    """A new conversation: lines volatile by pattern or by a learned template leave the
    system message from the first turn on, so it never carries a stale value."""
    if state.system is None:
        return Decision("volatile", False, "no system text", state)
    rest, marked = volatile.marker_split(state.system, ctx.config.patterns)
    found = ctx.templates.lookup(rest)
    stable_keys = found[1] if found else None
    stable, added = (found[0].stable, marked + found[0].added) if found else (rest, marked)
    learned = (rest, stable_keys)
    if not added:
        return Decision("volatile", False, "nothing volatile", replace(state, learned=learned))
    split = volatile.SystemSplit(stable, added)
    messages = (replace(state.messages[0], content=stable), *state.messages[1:])
    return Decision("volatile", True, "volatile lines known before the first turn", replace(
        state, messages=messages, blocks=(volatile.context_block(added),), told=split.told,
        learned=learned, applied=(*state.applied, "volatile")))  # fmt: skip


def stable_tools(state: State, ctx: Context) -> Decision:
    """Tools in the lineage's first order, keys sorted."""
    conv = state.conv
    if conv.tools is None:
        return Decision("tools", False, "no tools", state)
    if not ctx.on("tools"):
        keys = tuple(tools.canonical(t) for t in conv.tools)
        return Decision("tools", False, "tools off", replace(state, tools=conv.tools,
                                                             tool_keys=keys))  # fmt: skip
    previous = state.tape.tools if state.tape is not None else []
    ordered, order, changed = tools.stable_tools(conv.tools, previous)
    keys = tuple(order)
    applied = (*state.applied, "tools") if changed and previous else state.applied
    return Decision("tools", changed, "first order kept", replace(
        state, tools=tuple(ordered), tool_keys=keys, applied=applied))  # fmt: skip


def place_blocks(state: State) -> State:
    """The collected blocks appended to the newest user message among the new messages;
    with none there, the rewrite is skipped whole rather than half done."""
    if not state.blocks:
        return state
    messages = list(state.messages)
    newest = compaction.last_user(messages[state.new_start :]) + state.new_start
    if newest >= len(messages):
        return replace(state, skipped="no new user turn to carry the volatile block")
    messages[newest] = volatile.with_block(messages[newest], "".join(state.blocks))
    return replace(state, messages=tuple(messages))


# The rules, in the order they run; ``--rewrite`` names entries of this table.
STEPS: tuple[tuple[str, Step], ...] = (
    ("tape", continue_tape),
    ("compaction", append_compaction),
    ("volatile", move_volatile),
    ("tools", stable_tools),
    ("summarizer", summarize_from_tape),
)
RULES = tuple(name for name, _ in STEPS)
# What ``all`` means: every rule but the opt-in ones (``summarizer``), named to add them.
DEFAULT = frozenset(RULES) - {"summarizer"}


@dataclass
class Plan:
    conv: Conversation  # what goes upstream
    original: Conversation
    identity: Identity = field(default_factory=Identity)
    applied: list[str] = field(default_factory=list)
    cause: MissCause | None = None  # why the lineage's prefix could not be kept
    tape: Tape | None = None  # what to record once sent
    continued: Tape | None = None  # the tape this request continues
    fallback: Plan | None = None  # the client's compacted form, if the append is too long
    decisions: list[Decision] = field(default_factory=list)
    refused: str | None = None  # the contract check failed: why
    learned: tuple[str, tuple[str, ...] | None] | None = None
    session_key: str | None = None  # issued to an unnamed new conversation, to echo back

    @property
    def header(self) -> str:
        if self.refused:
            return "refused"
        return ",".join(self.applied) or "none"

    @property
    def diverged_message(self) -> int | None:
        return self.cause.message if self.cause is not None else None


def system_text(conv: Conversation) -> str | None:
    if conv.messages and conv.messages[0].role == "system":
        content = conv.messages[0].content
        return content if isinstance(content, str) else None
    return None


# Principals whose learned system-prompt templates are kept (least recently used out).
MAX_TEMPLATE_OWNERS = 256


class Rewriter:
    def __init__(self, config: RewriteConfig, tapes: TapeStore) -> None:
        self.config = config
        self.tapes = tapes
        # Learned per principal: a template learned from another client's system prompt
        # would tell this client which of its lines differ from that prompt (its
        # x-kvproxy-rewrite header, and what it reuses), and compare the two texts.
        self._templates: OrderedDict[str, volatile.Templates] = OrderedDict()

    def templates(self, principal: str) -> volatile.Templates:
        found = self._templates.pop(principal, None) or volatile.Templates()
        self._templates[principal] = found
        while len(self._templates) > MAX_TEMPLATE_OWNERS:
            self._templates.popitem(last=False)
        return found

    def on(self, rule: str) -> bool:
        return rule in self.config.rules

    def plan(self, conv: Conversation, identity: Identity | None = None) -> Plan:
        identity = identity or Identity()
        if conv.kind != "chat" or not conv.messages or not self.config.rules:
            return Plan(conv=conv, original=conv, identity=identity)
        plan = self.run(conv, identity, None)
        if plan.continued is not None and any(a.startswith("compaction") for a in plan.applied):
            plan.fallback = self.run(conv, identity, MissCause("over-budget"))
        elif any(a.startswith("summarizer") for a in plan.applied):
            # the conversation's own system prompt makes it longer than the transcript
            plan.fallback = self.as_sent(conv, identity, MissCause("over-budget"), [])
        return plan

    def run(self, conv: Conversation, identity: Identity, forced: MissCause | None) -> Plan:
        """The steps in order, then the contract; ``forced``: a new tape with this cause."""
        ctx = Context(self.config, self.tapes.all(), self.templates(identity.principal))
        request = Request.of(conv.messages, identity)
        state = State(conv, request, system_text(conv), Lineage("fresh"), conv.messages)
        decisions = []
        for name, step in STEPS:
            if forced is not None and name in ("tape", "compaction"):
                continue
            decision = step(state, ctx)
            decisions.append(decision)
            state = decision.state
        if forced is not None:
            state = replace(state, cause=forced)
        state = place_blocks(state)
        if state.skipped:
            log.info("rewrite_skipped", reason=state.skipped)
            skipped = MissCause("rewrite-skipped", reason=state.skipped)
            return self.as_sent(conv, identity, skipped, decisions)
        planned = replace(conv, messages=state.messages, tools=state.tools)
        if state.summary is not None:
            refused = contract.check_summary(planned, conv, state.summary, identity)
        else:
            refused = contract.check(planned, conv, state.tape, identity)
        if refused is not None:
            log.warning("rewrite_refused", reason=refused, rules=list(state.applied))
            plan = self.as_sent(conv, identity, MissCause("rewrite-refused", reason=refused),
                                decisions)  # fmt: skip
            plan.refused = refused
            return plan
        plan = Plan(conv=planned, original=conv, identity=identity,
                    applied=list(state.applied), cause=state.cause, continued=state.tape,
                    decisions=decisions, learned=state.learned)  # fmt: skip
        return self.with_tape(plan, state)

    def as_sent(self, conv: Conversation, identity: Identity, cause: MissCause,
                decisions: list[Decision]) -> Plan:  # fmt: skip
        """The client's request unchanged, as a new conversation."""
        request = Request.of(conv.messages, identity)
        state = State(conv, request, system_text(conv), Lineage("fresh"), conv.messages,
                      tools=conv.tools,
                      tool_keys=tuple(tools.canonical(t) for t in conv.tools or ()))  # fmt: skip
        plan = Plan(conv=conv, original=conv, identity=identity, cause=cause,
                    decisions=decisions)  # fmt: skip
        return self.with_tape(plan, state)

    def with_tape(self, plan: Plan, state: State) -> Plan:
        """The plan with the tape to record; a new conversation the client did not name
        gets a session key (``x-kvproxy-session``): echoed back, it names the session,
        and the rules that need one apply."""
        plan.tape = self.new_tape(state, plan.original, plan.identity)
        if state.tape is not None:
            plan.tape.issued = state.tape.issued
        elif plan.identity.session is None:
            plan.session_key = secrets.token_urlsafe(18)
            plan.tape.issued = digest(plan.session_key)
        return plan

    def new_tape(self, state: State, conv: Conversation, identity: Identity) -> Tape:
        tape = state.tape
        f = first_user_index(state.request.roles)
        return Tape(
            lineage=tape.lineage if tape is not None else uuid.uuid4().hex[:16],
            client=list(state.request.hashes),
            client_roles=list(state.request.roles),
            sent=list(state.messages),
            principal=identity.principal,
            session=identity.session,
            told=state.told,
            tools=list(state.tool_keys),
            first_user=volatile.line_text(conv.messages[f]) if f is not None else "",
        )

    def commit(self, plan: Plan, reply: str | None = None) -> None:
        """Record what was sent (and the reply relayed for it) for the next request."""
        if plan.tape is None or not self.on("tape"):
            return
        if reply:
            plan.tape.reply = text_hash(reply)
        self.tapes.put(plan.tape)
        if plan.learned is not None:
            self.templates(plan.identity.principal).learn(*plan.learned)
