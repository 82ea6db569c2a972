"""The lineage rules are tried in the order of ``LINEAGE_RULES`` and the first answer wins:
each case names the rule that must answer first, and what it answers."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.core.conversation import Message
from proxy.rewrite.identity import Identity
from proxy.rewrite.lineage import (
    LINEAGE_RULES,
    Candidates,
    Request,
    common_prefix,
    find_lineage,
)
from proxy.rewrite.tape import Tape, client_hashes

SUMMARY = "The conversation history before this point was compacted into the following summary: x"
Turns = list[tuple[str, str]]


def messages(turns: Turns) -> list[Message]:
    return [Message.make(role, text) for role, text in turns]


def tape(turns: Turns, sent: str = "sent", principal: str = "p", session: str | None = "s") -> Tape:
    msgs = messages(turns)
    roles = [m.role for m in msgs]
    reply = [Message.make("assistant", sent)]
    hashes = client_hashes(msgs)
    return Tape(f"l-{sent}", hashes, roles, reply, principal=principal, session=session)


HISTORY = [("system", "S1"), ("user", "a"), ("assistant", "x"), ("user", "c")]
ON = {"volatile": True, "compacting": True}

# (case, tapes, request, identity, rules on, the rule that answers, kind, reason, shared)
CASES: list[tuple[str, list[Tape], Turns, Identity, dict[str, bool], str | None, str, Any, int]] = [
    ("a first turn is fresh even where a tape would continue", [tape(HISTORY[:2])],
     [*HISTORY[:2], ("user", "b")], Identity("p", "s"), ON, "first-turn", "fresh", "first-turn", 0),
    ("another principal's tape is no candidate", [tape(HISTORY, principal="q")],
     [*HISTORY, ("assistant", "y")], Identity("p", "s"), ON, None, "fresh", None, 0),
    ("another session's tape is no candidate", [tape(HISTORY, session="t")],
     [*HISTORY, ("assistant", "y")], Identity("p", "s"), ON, None, "fresh", None, 0),
    ("an exact continuation", [tape(HISTORY)], [*HISTORY, ("assistant", "y"), ("user", "d")],
     Identity("p", "s"), ON, "exact", "append", None, 0),
    ("two longest tapes that sent differently end the search", [tape(HISTORY, "one"),
     tape(HISTORY, "two")], [*HISTORY, ("assistant", "y")], Identity("p", "s"), ON, "exact",
     "fresh", "ambiguous", 0),
    ("a changed system message, in a named session", [tape(HISTORY)],
     [("system", "S2"), *HISTORY[1:], ("assistant", "y")], Identity("p", "s"), ON, "system",
     "system", "append", 0),
    ("a changed system message needs a named session", [tape(HISTORY, session=None)],
     [("system", "S2"), *HISTORY[1:], ("assistant", "y")], Identity("p"), ON, "system", "fresh",
     "needs-session", 0),
    ("a changed system message, volatile off", [tape(HISTORY)],
     [("system", "S2"), *HISTORY[1:], ("assistant", "y")], Identity("p", "s"),
     {"volatile": False, "compacting": True}, None, "fresh", None, 0),
    ("a changed first user message", [tape(HISTORY)],
     [HISTORY[0], ("user", "b"), *HISTORY[2:], ("user", "d")], Identity("p", "s"), ON, "splice",
     "splice", None, 0),
    ("a splice is tried before a compaction", [tape(HISTORY)],
     [HISTORY[0], ("user", SUMMARY), *HISTORY[2:], ("user", "d")], Identity("p", "s"), ON,
     "splice", "splice", None, 0),
    ("a compaction", [tape(HISTORY)],
     [HISTORY[0], ("user", SUMMARY), ("assistant", "y"), ("user", "d")], Identity("p", "s"), ON,
     "compaction", "compaction", None, 0),
    ("a compaction, the rule off", [tape(HISTORY)],
     [HISTORY[0], ("user", SUMMARY), ("assistant", "y"), ("user", "d")], Identity("p", "s"),
     {"volatile": True, "compacting": False}, None, "fresh", None, 1),
    ("an edited history matches no rule", [tape(HISTORY)],
     [*HISTORY[:2], ("assistant", "z"), ("user", "d")], Identity("p", "s"), ON, None, "fresh",
     None, 2),
]  # fmt: skip


def test_the_rules_in_order() -> None:
    assert [name for name, _ in LINEAGE_RULES] == [
        "first-turn",
        "exact",
        "system",
        "splice",
        "compaction",
    ]


@pytest.mark.parametrize(
    ("tapes", "turns", "identity", "on", "rule", "kind", "reason", "shared"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_the_first_rule_that_answers_decides(
    tapes: list[Tape],
    turns: Turns,
    identity: Identity,
    on: dict[str, bool],
    rule: str | None,
    kind: str,
    reason: str | None,
    shared: int,
) -> None:
    req = Request.of(messages(turns), identity)
    candidates = Candidates(tapes, req, on["volatile"], on["compacting"])
    answering = [name for name, step in LINEAGE_RULES if step(candidates) is not None]
    assert (answering[:1] or [None])[0] == rule
    found = find_lineage(tapes, req, **on)
    assert (found.kind, found.reason, found.shared) == (kind, reason, shared)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from("xyz"), max_size=12), st.lists(st.sampled_from("xyz"), max_size=12),
       st.integers(0, 12))  # fmt: skip
def test_common_prefix_is_the_count_of_leading_equal_items(a: list[str], b: list[str],
                                                          shared: int) -> None:  # fmt: skip
    b = a[:shared] + b
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    assert common_prefix(a, tuple(b)) == n == common_prefix(tuple(b), a)
