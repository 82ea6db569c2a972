"""Conversations never mix: the upstream request holds the client's own content, moved only
as a rule says, and never another conversation's (the bugs of issue 9, as named cases)."""

from __future__ import annotations

from proxy.conversation import Conversation, Message
from proxy.rewrite.engine import RewriteConfig, Rewriter
from proxy.rewrite.tape import TapeStore

BASE = "You are a support agent for ACME.\nBe polite.\nNever share account numbers.\n"
ALICE = BASE + "Customer: Alice Smith, account 4421-9932\nAnswer in English.\n"
BOB = BASE + "Customer: Bob Jones, account 7781-1200\nAnswer in English.\n"


def m(role: str, content: object, **extra: object) -> Message:
    return Message.make(role, content, **extra)


def chat(*messages: Message) -> Conversation:
    return Conversation(kind="chat", messages=tuple(messages))


def upstream_text(conv: Conversation) -> str:
    return "\n".join(msg.text() for msg in conv.messages)


def send(rw: Rewriter, *messages: Message) -> Conversation:
    plan = rw.plan(chat(*messages))
    rw.commit(plan)
    return plan.conv


def test_alice_and_bob_each_get_their_own_system_prompt() -> None:
    rw = Rewriter(RewriteConfig(), TapeStore())
    alice1 = send(rw, m("system", ALICE), m("user", "hi"))
    assert "4421-9932" in upstream_text(alice1)
    bob1 = send(rw, m("system", BOB), m("user", "hi"))
    assert "7781-1200" in upstream_text(bob1) and "4421" not in upstream_text(bob1)
    bob2 = send(
        rw, m("system", BOB), m("user", "hi"), m("assistant", "Hello!"), m("user", "balance?")
    )
    assert "7781-1200" in upstream_text(bob2) and "Alice" not in upstream_text(bob2)
    alice2 = send(
        rw, m("system", ALICE), m("user", "hi"), m("assistant", "Hello!"), m("user", "balance?")
    )
    assert "4421-9932" in upstream_text(alice2) and "Bob" not in upstream_text(alice2)


def test_a_new_daily_conversation_is_answered_with_its_own_date() -> None:
    rw = Rewriter(RewriteConfig(), TapeStore())
    day = "You write the daily report.\nToday is {}.\nUse bullet points.\n"
    first = send(rw, m("system", day.format("2026-11-22")), m("user", "Write today's report."))
    assert "2026-11-22" in upstream_text(first)  # a one-request job: its tape ends here
    second = send(rw, m("system", day.format("2026-11-23")), m("user", "Write today's report."))
    assert "2026-11-23" in upstream_text(second) and "2026-11-22" not in upstream_text(second)
    turn2 = send(
        rw,
        m("system", day.format("2026-11-23")),
        m("user", "Write today's report."),
        m("assistant", "- ok"),
        m("user", "more"),
    )
    assert "2026-11-23" in upstream_text(turn2) and "2026-11-22" not in upstream_text(turn2)


def test_a_new_openclaw_session_with_the_same_system_is_not_another_sessions_compaction() -> None:
    rw = Rewriter(RewriteConfig(), TapeStore())
    system = "OpenClaw system prompt\n" + "rule line\n" * 50
    history: list[Message] = [
        m("system", system),
        m("user", "Runtime: agent=main | sessionId=s1\nMy name is Carol."),
    ]
    for i in range(6):
        history += [m("assistant", f"reply {i} " + "x" * 300), m("user", f"step {i}")]
        send(rw, *history)
    internal = m("user", [{"type": "text", "text": "<<<BEGIN_OPENCLAW_INTERNAL_CONTEXT>>> 0"}])
    new = send(
        rw,
        m("system", system),
        m("user", "Runtime: agent=main | sessionId=s2\n" + "Hello, new session. " * 20),
        internal,
    )
    assert len(new.messages) == 3 and "Carol" not in upstream_text(new)


def test_a_volatile_line_that_cannot_be_placed_is_not_dropped() -> None:
    rw = Rewriter(RewriteConfig(), TapeStore())
    system = "Agent.\nDate: 1\nRules.\nMore rules.\n"
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    send(rw, m("system", system), m("user", "go"))
    sent = send(
        rw,
        m("system", system.replace("Date: 1", "Date: 2")),
        m("user", "go"),
        m("assistant", None, tool_calls=[call]),
        m("tool", "result", tool_call_id="c1"),
    )
    assert "Date: 2" in upstream_text(sent)
