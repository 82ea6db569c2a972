"""The contract check, identities, learned volatile lines, and what the model sees for
inserted, changed and removed system lines (table-driven where the rule is a decision)."""

from __future__ import annotations

import pytest

from proxy.core.conversation import Conversation, Message
from proxy.rewrite import contract, engine
from proxy.rewrite.engine import RewriteConfig, Rewriter
from proxy.rewrite.identity import ANONYMOUS, Identity, identify
from proxy.rewrite.tape import Tape, TapeStore
from proxy.rewrite.volatile import (
    BLOCK_CLOSE,
    BLOCK_OPEN,
    REMOVED_CLOSE,
    REMOVED_OPEN,
    marker_split,
)

TOOL_LINE = "- exec: run a shell command on the gateway host\n"
BIG = "".join(f"Rule {i}: keep the workspace tidy and explain each step.\n" for i in range(400))
OPENCLAW = (
    "<!-- openclaw:attempt:STABLE -->\nYou are OpenClaw.\n" + BIG + "Current date: 2026-11-22\n"
)


def m(role: str, content: object, **extra: object) -> Message:
    return Message.make(role, content, **extra)


def chat(*messages: Message, tools: list[dict] | None = None, **params: object) -> Conversation:
    return Conversation(
        kind="chat", messages=tuple(messages), tools=tuple(tools) if tools else None, params=params
    )


# The rules that continue a changed conversation apply inside a named session.
NAMED = Identity(session="session-under-test")


def send(rw: Rewriter, conv: Conversation, identity: Identity | None = None) -> engine.Plan:
    plan = rw.plan(conv, identity or NAMED)
    assert plan.refused is None
    rw.commit(plan)
    return plan


def test_an_inserted_line_near_the_top_is_volatile_not_a_new_system_prompt() -> None:
    """Switching OpenClaw's mode inserts one tool line near the top of a 40 KB prompt while
    the date at its end changes too: the slot's system message stays, both go to the turn."""
    rw = Rewriter(RewriteConfig(), TapeStore())
    turn1 = [m("system", OPENCLAW), m("user", "hi")]
    first = send(rw, chat(*turn1))
    switched = OPENCLAW.replace("You are OpenClaw.\n", "You are OpenClaw.\n" + TOOL_LINE)
    switched = switched.replace("2026-11-22", "2026-11-23")
    plan = send(
        rw, chat(m("system", switched), m("user", "hi"), m("assistant", "yo"), m("user", "q"))
    )
    assert plan.cause is None and plan.applied == ["volatile"]
    assert list(plan.conv.messages[:2]) == list(first.conv.messages)
    assert plan.conv.messages[-1].content == (
        f"q\n\n{BLOCK_OPEN}\n{TOOL_LINE}Current date: 2026-11-23\n{BLOCK_CLOSE}"
    )


def test_a_removed_line_is_named_as_no_longer_applying() -> None:
    rw = Rewriter(RewriteConfig(), TapeStore())
    system = "Agent.\nRule A.\nRule B.\nRule C.\nRule D.\n"
    send(rw, chat(m("system", system), m("user", "hi")))
    plan = send(
        rw,
        chat(
            m("system", system.replace("Rule B.\n", "")),
            m("user", "hi"),
            m("assistant", "yo"),
            m("user", "q"),
        ),
    )
    assert plan.conv.messages[0].content == system
    assert plan.conv.messages[-1].content == f"q\n\n{REMOVED_OPEN}\nRule B.\n{REMOVED_CLOSE}"


def test_lines_learned_volatile_leave_the_system_message_from_the_first_turn() -> None:
    rw = Rewriter(RewriteConfig(), TapeStore())
    day = "You write reports.\nDate: {}\nUse bullets.\nBe short.\n"
    send(rw, chat(m("system", day.format("2026-11-21")), m("user", "report")))
    plan = send(rw, chat(m("system", day.format("2026-11-22")), m("user", "report")))
    assert plan.conv.messages[0].content == "You write reports.\nUse bullets.\nBe short.\n"
    assert (
        plan.conv.messages[1].content == f"report\n\n{BLOCK_OPEN}\nDate: 2026-11-22\n{BLOCK_CLOSE}"
    )
    # next turn: the same value is not told again, the prompt only grows
    turn2 = send(
        rw,
        chat(
            m("system", day.format("2026-11-22")),
            m("user", "report"),
            m("assistant", "- a"),
            m("user", "more"),
        ),
    )
    assert list(turn2.conv.messages[:2]) == list(plan.conv.messages)
    assert turn2.conv.messages[-1].content == "more"
    # and a third day's new conversation is split the same way, from the learned lines
    day3 = send(rw, chat(m("system", day.format("2026-11-23")), m("user", "report")))
    assert day3.conv.messages[0].content == plan.conv.messages[0].content


def test_pattern_moves_whole_lines() -> None:
    import re

    pattern = re.compile(r"<ctx>.*?</ctx>", re.S)
    assert marker_split("a\nkeep <ctx>x</ctx> this\nb\n", [pattern]) == (
        "a\nb\n",
        "keep <ctx>x</ctx> this\n",
    )


@pytest.mark.parametrize(
    ("headers", "params", "first", "principal_anonymous", "session"),
    [
        ({}, {}, "hi", True, None),
        ({"Authorization": "Bearer k1"}, {}, "hi", False, None),
        ({}, {"user": "u-7"}, "hi", False, "u-7"),
        ({"X-Session-Id": "abc"}, {}, "hi", True, "abc"),
        ({}, {}, "Runtime: agent=main | session=x | sessionId=s-42\nhi", True, "s-42"),
    ],
)
def test_identity(
    headers: dict, params: dict, first: str, principal_anonymous: bool, session: str | None
) -> None:
    identity = identify(headers, chat(m("user", first), **params))
    assert (identity.principal == ANONYMOUS) is principal_anonymous
    assert (identity.session is None) is (session is None)
    if session is not None:
        assert session not in identity.session  # only a hash is kept


def test_different_credentials_never_share_a_tape() -> None:
    rw = Rewriter(RewriteConfig(), TapeStore())
    one, two = Identity("key-one"), Identity("key-two")
    system = "Agent.\nDate: 1\nRules.\nMore.\n"
    send(rw, chat(m("system", system), m("user", "hi")), one)
    plan = send(
        rw, chat(m("system", system), m("user", "hi"), m("assistant", "a"), m("user", "b")), two
    )
    assert plan.continued is None
    plan = send(
        rw, chat(m("system", system), m("user", "hi"), m("assistant", "a"), m("user", "b")), one
    )
    assert plan.continued is not None


SUMMARY = "The conversation history before this point was compacted into the following summary:"


def test_a_compaction_two_conversations_could_own_is_not_appended() -> None:
    rw = Rewriter(RewriteConfig(), TapeStore())
    system = "Agent.\n"
    for name in ("first", "second"):
        send(rw, chat(m("system", system), m("user", "task " + name)))
        send(
            rw,
            chat(
                m("system", system),
                m("user", "task " + name),
                m("assistant", "ok"),
                m("user", "go on"),
            ),
        )
    compacted = chat(
        m("system", system),
        m("user", SUMMARY + "\n<summary>s</summary>"),
        m("assistant", "ok"),
        m("user", "go on"),
        m("assistant", "x"),
        m("user", "new"),
    )
    plan = send(rw, compacted)
    assert plan.applied == [] and list(plan.conv.messages) == list(compacted.messages)


def test_a_block_with_no_user_turn_to_carry_it_sends_the_request_as_is() -> None:
    rw = Rewriter(RewriteConfig(), TapeStore())
    system = "Agent.\nDate: 1\nRules.\nMore rules.\n"
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    send(rw, chat(m("system", system), m("user", "go")))
    conv = chat(
        m("system", system.replace("1", "2")),
        m("user", "go"),
        m("assistant", None, tool_calls=[call]),
        m("tool", "out", tool_call_id="c1"),
    )
    plan = send(rw, conv)
    assert plan.conv is conv and plan.cause is not None and plan.cause.kind == "rewrite-skipped"


def test_a_plan_that_breaks_the_contract_is_refused_and_sent_as_is(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    def leak(state: engine.State, ctx: engine.Context) -> engine.Decision:
        messages = (*state.messages[:-1], m("user", "another client's secret"), state.messages[-1])
        return engine.Decision("tools", True, "bug", engine.replace(state, messages=messages))

    monkeypatch.setattr(engine, "STEPS", (*engine.STEPS[:-1], ("tools", leak)))
    rw = Rewriter(RewriteConfig(), TapeStore())
    conv = chat(m("system", "Agent."), m("user", "hi"))
    plan = rw.plan(conv)
    assert plan.refused is not None and "neither the client" in plan.refused
    assert plan.conv is conv and plan.header == "refused"
    assert plan.cause is not None and plan.cause.kind == "rewrite-refused"


CLIENT = chat(
    m("system", "S1\nS2"),
    m("user", "hello\nworld"),
    tools=[{"type": "function", "function": {"name": "a"}}],
    temperature=0.1,
)
TAPE = Tape("l", [], [], [m("system", "S1\nS0"), m("user", "earlier")])


@pytest.mark.parametrize(
    ("planned", "tape", "identity", "problem"),
    [
        (CLIENT, None, Identity(), None),
        (
            chat(
                m("system", "S1"),
                m("user", f"hello\nworld\n\n{BLOCK_OPEN}\nS2\n{BLOCK_CLOSE}"),
                tools=list(CLIENT.tools or ()),
                temperature=0.1,
            ),
            None,
            Identity(),
            None,
        ),
        (
            chat(
                m("system", "S1\nS0"),
                m("user", "earlier"),
                m("user", f"hello\nworld\n{BLOCK_OPEN}\nS2"),
                tools=list(CLIENT.tools or ()),
                temperature=0.1,
            ),
            TAPE,
            Identity(),
            None,
        ),
        (
            chat(
                m("system", "S1\nS0"),
                m("user", "hello\nworld"),
                tools=list(CLIENT.tools or ()),
                temperature=0.1,
            ),
            None,
            Identity(),
            "missing",
        ),
        (
            chat(
                m("system", "S1\nS2\nS9"),
                m("user", "hello\nworld"),
                tools=list(CLIENT.tools or ()),
                temperature=0.1,
            ),
            TAPE,
            Identity(),
            "neither",
        ),
        (
            chat(m("system", "S1\nS2"), m("user", "hello\nworld"), temperature=0.1),
            None,
            Identity(),
            "tools",
        ),
        (
            chat(
                m("system", "S1\nS2"),
                m("user", "hello\nworld"),
                tools=list(CLIENT.tools or ()),
                temperature=0.9,
            ),
            None,
            Identity(),
            "parameter",
        ),
        (
            chat(
                m("system", "S1\nS2"),
                m("user", "hello\nworld"),
                m("assistant", "x"),
                tools=list(CLIENT.tools or ()),
                temperature=0.1,
            ),
            None,
            Identity(),
            "neither",
        ),
        (CLIENT, TAPE, Identity("someone else"), "another client"),
    ],
)
def test_contract(
    planned: Conversation, tape: Tape | None, identity: Identity, problem: str | None
) -> None:
    found = contract.check(planned, CLIENT, tape, identity)
    assert (found is None) if problem is None else (found is not None and problem in found)
