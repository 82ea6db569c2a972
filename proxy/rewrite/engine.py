"""The rewrite pipeline: a client's chat request in, the cache-stable request out.

``Rewriter.plan`` is pure with respect to the tapes (it reads them); ``Rewriter.commit``
records what was finally sent. The handler sends the plan's ``conv``, or the client's own
form when the planned one does not fit the upstream's context (``over-budget``).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from proxy.conversation import Conversation, Message
from proxy.rewrite import compaction, tools, volatile
from proxy.rewrite.tape import (
    Tape,
    TapeStore,
    align,
    client_hashes,
    first_user_index,
    splice_match,
)

RULES = ("tape", "volatile", "compaction", "tools")


@dataclass(frozen=True)
class RewriteConfig:
    """Which rules run (``--rewrite``), and the operator's volatile patterns."""

    rules: frozenset[str] = frozenset(RULES)
    patterns: tuple[re.Pattern[str], ...] = ()
    reserve_tokens: int = 1024  # context left for the reply when appending a compaction

    @classmethod
    def parse(cls, spec: str, patterns: Sequence[str] = (), reserve: int = 1024) -> RewriteConfig:
        """``all``, ``off``, or a comma list of rules (``-rule`` removes one from all)."""
        spec = spec.strip()
        if spec in ("", "all", "on"):
            rules = set(RULES)
        elif spec == "off":
            rules = set()
        else:
            parts = [p.strip() for p in spec.split(",") if p.strip()]
            rules = set(RULES) if all(p.startswith("-") for p in parts) else set()
            for part in parts:
                name = part.lstrip("-+")
                if name not in RULES:
                    raise ValueError(f"unknown rewrite rule {name!r}; rules: {', '.join(RULES)}")
                (rules.discard if part.startswith("-") else rules.add)(name)
        return cls(frozenset(rules), tuple(re.compile(p, re.S) for p in patterns), reserve)


@dataclass
class Plan:
    conv: Conversation  # what goes upstream
    original: Conversation
    applied: list[str] = field(default_factory=list)
    cause: str | None = None  # why the lineage's prefix could not be kept
    diverged_message: int | None = None  # first client message that differs from the tape
    tape: Tape | None = None  # what to record once sent
    fallback: Plan | None = None  # the client's compacted form, if the append is too long

    @property
    def header(self) -> str:
        return ",".join(self.applied) or "none"


def system_text(conv: Conversation) -> str | None:
    if conv.messages and conv.messages[0].role == "system":
        return conv.messages[0].text() if isinstance(conv.messages[0].content, str) else None
    return None


class Rewriter:
    def __init__(self, config: RewriteConfig, tapes: TapeStore) -> None:
        self.config = config
        self.tapes = tapes

    def on(self, rule: str) -> bool:
        return rule in self.config.rules

    def plan(self, conv: Conversation) -> Plan:
        if conv.kind != "chat" or not conv.messages or not self.config.rules:
            return Plan(conv=conv, original=conv)
        hashes = client_hashes(conv.messages)
        system = system_text(conv)
        stable, marked = (
            volatile.marker_split(system, self.config.patterns)
            if system is not None and self.on("volatile")
            else (system, "")
        )
        tape, shared = self.tapes.best(hashes, stable) if self.on("tape") else (None, 0)
        if tape is None:
            return self.fresh(conv, hashes, stable, marked, cause=None)
        alignment = align(tape, hashes, [m.role for m in conv.messages])
        plan = Plan(conv=conv, original=conv)
        spliced = self.first_user_splice(tape, conv, hashes)
        if spliced is not None:
            appended = spliced
            plan.applied.append("volatile")
        elif alignment.kind == "diverged":
            found = None
            if self.on("compaction"):
                is_new = compaction.new_in_order(tape.client, hashes)
                found = compaction.find_summary(
                    conv.messages, is_new, shorter=len(hashes) < len(tape.client)
                )
            if found is None:
                cause = "edited-history" if shared > 1 else None
                fresh = self.fresh(conv, hashes, stable, marked, cause=cause)
                fresh.diverged_message = alignment.common if cause else None
                return fresh
            index, shape = found
            new = [m for m, n, i in zip(conv.messages, is_new, range(len(hashes)), strict=True)
                   if n and i != index]  # fmt: skip
            appended = compaction.append_order(new, conv.messages[index])
            plan.applied.append(f"compaction:{shape}")
            plan.fallback = self.fresh(conv, hashes, stable, marked, cause="over-budget")
        else:
            appended = list(conv.messages[alignment.common :])
            if alignment.kind == "transient":
                plan.applied.append("transient")
        sent_system, block, new_volatile = self.system_update(tape, stable, marked)
        if sent_system is None:  # the system prompt itself changed: a real miss
            fresh = self.fresh(conv, hashes, stable, marked, cause="system-mutation")
            fresh.diverged_message = 0
            return fresh
        if block:
            appended, placed = place_block(appended, block)
            if placed:
                plan.applied.append("volatile")
            else:
                new_volatile = tape.volatile
        self.finish(plan, tape.lineage, hashes, [*tape.sent, *appended], stable, new_volatile,
                    tape.tools)  # fmt: skip
        return plan

    def first_user_splice(
        self, tape: Tape, conv: Conversation, hashes: list[str]
    ) -> list[Message] | None:
        """Content spliced into the first user message (the variable part of an otherwise
        unchanged history): the changed lines go to the newest user turn, the first user
        message stays as the tape holds it. None when this is not such a request."""
        if not self.on("volatile") or not splice_match(tape, hashes):
            return None
        f = first_user_index(tape.client_roles)
        assert f is not None
        new_text = conv.messages[f].content
        if not isinstance(new_text, str):
            return None
        change = volatile.changed_lines(tape.first_user, new_text)
        if change is None or not volatile.is_volatile_change(new_text, change[1]):
            return None
        block = volatile.context_block(change[1], volatile.FIRST_USER_OPEN)
        appended, placed = place_block(list(conv.messages[len(tape.client) :]), block)
        return appended if placed else None

    def system_update(
        self, tape: Tape, stable: str | None, marked: str
    ) -> tuple[str | None, str, str]:
        """(system as the tape sent it, block for the newest user turn, volatile text now);
        a None system means the change is too large to be a volatile part."""
        sent = tape.sent[0].text() if tape.sent and tape.sent[0].role == "system" else ""
        learned = ""
        if self.on("volatile") and stable is not None and tape.system_stable is not None:
            change = volatile.changed_lines(tape.system_stable, stable)
            if change is not None:
                if not volatile.is_volatile_change(stable, change[1]):
                    return None, "", tape.volatile
                learned = change[1]
        elif stable != tape.system_stable:
            return None, "", tape.volatile
        current = "\n".join(p for p in (marked, learned) if p)
        if not current or current == tape.volatile:
            return sent, "", tape.volatile
        return sent, volatile.context_block(current), current

    def tool_update(
        self, conv: Conversation, previous: list[str], plan: Plan
    ) -> tuple[tuple[dict, ...] | None, list[str]]:
        if conv.tools is None:
            return None, previous
        if not self.on("tools"):
            return conv.tools, [tools.canonical(t) for t in conv.tools]
        ordered, changed = tools.stable_tools(conv.tools, previous)
        if changed and previous:
            plan.applied.append("tools")
        return tuple(ordered), [tools.canonical(t) for t in ordered]

    def fresh(
        self,
        conv: Conversation,
        hashes: list[str],
        stable: str | None,
        marked: str,
        cause: str | None,
    ) -> Plan:
        """A new tape from the client's own form (markers still moved, tools still sorted)."""
        plan = Plan(conv=conv, original=conv, cause=cause)
        messages = list(conv.messages)
        if marked and stable is not None:
            messages[0] = replace(messages[0], content=stable)
            rest, placed = place_block(messages[1:], volatile.context_block(marked))
            if placed:
                messages = [messages[0], *rest]
                plan.applied.append("volatile")
            else:
                messages = list(conv.messages)
                stable = system_text(conv)
                marked = ""
        self.finish(plan, uuid.uuid4().hex[:16], hashes, messages, stable, marked, [])
        return plan

    def finish(
        self,
        plan: Plan,
        lineage: str,
        hashes: list[str],
        messages: list[Message],
        stable: str | None,
        volatile_text: str,
        previous_tools: list[str],
    ) -> None:
        """The upstream conversation (messages, tools in their stable order) and its tape."""
        conv = plan.original
        sent_tools, tool_keys = self.tool_update(conv, previous_tools, plan)
        plan.conv = replace(conv, messages=tuple(messages), tools=sent_tools)
        f = first_user_index([m.role for m in conv.messages])
        plan.tape = Tape(
            lineage=lineage,
            client=hashes,
            client_roles=[m.role for m in conv.messages],
            sent=messages,
            system_stable=stable,
            volatile=volatile_text,
            tools=tool_keys,
            first_user=conv.messages[f].text() if f is not None else "",
        )

    def commit(self, plan: Plan) -> None:
        if plan.tape is not None and self.on("tape"):
            self.tapes.put(plan.tape)


def place_block(messages: list[Message], block: str) -> tuple[list[Message], bool]:
    """The block appended to the newest user message among ``messages``, if there is one."""
    newest = compaction.last_user(messages)
    if newest >= len(messages):
        return messages, False
    out = list(messages)
    out[newest] = volatile.with_block(out[newest], block)
    return out, True
