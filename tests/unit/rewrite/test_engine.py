"""Rewrite rules, turn by turn (pure): what goes upstream extends what was sent before."""

from __future__ import annotations

import re

import pytest

from proxy.core.conversation import Conversation, Message
from proxy.rewrite.engine import RewriteConfig, Rewriter
from proxy.rewrite.identity import Identity
from proxy.rewrite.tape import TapeStore
from proxy.rewrite.volatile import BLOCK_OPEN

SYSTEM = "You are an agent.\nFollow the rules.\nCurrent date: 2026-11-21\nBe brief.\n"
OPENCLAW_SUMMARY = (
    "The conversation history before this point was compacted into the following summary:"
    "\n\n<summary>We read three files and fixed a bug.</summary>"
)
HERMES_SUMMARY = "[CONTEXT COMPACTION — REFERENCE ONLY] Earlier turns: files were read. --- END"


def m(role: str, content: object, **extra: object) -> Message:
    return Message.make(role, content, **extra)


def chat(*messages: Message, tools: list[dict] | None = None) -> Conversation:
    return Conversation(
        kind="chat", messages=tuple(messages), tools=tuple(tools) if tools else None
    )


# The rules that continue a changed conversation apply inside a named session.
NAMED = Identity(session="session-under-test")


def rewriter(spec: str = "all", patterns: tuple[str, ...] = ()) -> Rewriter:
    return Rewriter(RewriteConfig.parse(spec, patterns), TapeStore())


def send(
    rw: Rewriter, conv: Conversation, reply: str | None = None
) -> tuple[list[Message], list[str], str | None]:
    plan = rw.plan(conv, NAMED)
    rw.commit(plan, reply=reply)
    return list(plan.conv.messages), plan.applied, plan.cause.kind if plan.cause else None


def extends(before: list[Message], after: list[Message]) -> bool:
    return after[: len(before)] == before


def test_append_only_conversation_passes_unchanged() -> None:
    rw = rewriter()
    turn1 = [m("system", SYSTEM), m("user", "hi")]
    sent1, applied, _ = send(rw, chat(*turn1))
    assert sent1 == turn1 and applied == []
    turn2 = [*turn1, m("assistant", "hello"), m("user", "more")]
    sent2, applied, _ = send(rw, chat(*turn2))
    assert sent2 == turn2 and applied == []


def test_learned_volatile_system_line_moves_to_the_newest_turn() -> None:
    rw = rewriter()
    sent1, _, _ = send(rw, chat(m("system", SYSTEM), m("user", "hi")))
    new_system = SYSTEM.replace("2026-11-21", "2026-11-22")
    sent2, applied, _ = send(
        rw, chat(m("system", new_system), m("user", "hi"), m("assistant", "yo"), m("user", "q"))
    )
    assert applied == ["volatile"] and extends(sent1, sent2)
    assert sent2[-1].content == f"q\n\n{BLOCK_OPEN}\nCurrent date: 2026-11-22\n</context-update>"
    # same volatile value next turn: nothing new to tell, still append-only
    sent3, applied, _ = send(
        rw,
        chat(m("system", new_system), m("user", "hi"), m("assistant", "yo"), m("user", "q"),
             m("assistant", "a"), m("user", "r")),
    )  # fmt: skip
    assert applied == [] and extends(sent2, sent3) and sent3[-1].content == "r"


def test_operator_pattern_is_volatile_from_the_first_turn() -> None:
    rw = rewriter(patterns=(r"<context>.*?</context>\n?",))
    system = "Rules.\n<context>RAG one</context>\nEnd.\n"
    sent1, applied, _ = send(rw, chat(m("system", system), m("user", "hi")))
    assert applied == ["volatile"] and sent1[0].content == "Rules.\nEnd.\n"
    assert "<context>RAG one</context>" in sent1[1].content
    system2 = system.replace("RAG one", "RAG two")
    sent2, applied, _ = send(
        rw, chat(m("system", system2), m("user", "hi"), m("assistant", "ok"), m("user", "next"))
    )
    assert applied == ["volatile"] and extends(sent1, sent2)
    assert "RAG two" in sent2[-1].content


def test_whole_new_system_prompt_is_a_miss_not_a_volatile_part() -> None:
    rw = rewriter()
    send(rw, chat(m("system", SYSTEM), m("user", "hi")))
    _, applied, cause = send(
        rw, chat(m("system", "Totally different.\n"), m("user", "hi"), m("assistant", "a"),
                 m("user", "b"))
    )  # fmt: skip
    assert cause == "system-mutation" and applied == []


def test_transient_trailing_context_stays_in_place() -> None:
    rw = rewriter()
    internal = m("user", [{"type": "text", "text": "<<<BEGIN_OPENCLAW_INTERNAL_CONTEXT>>> 1"}])
    base = [m("system", SYSTEM), m("user", "task")]
    sent1, _, _ = send(rw, chat(*base, internal))
    internal2 = m("user", [{"type": "text", "text": "<<<BEGIN_OPENCLAW_INTERNAL_CONTEXT>>> 2"}])
    sent2, applied, _ = send(rw, chat(*base, m("assistant", "done"), m("user", "next"), internal2))
    assert applied == ["transient"] and extends(sent1, sent2)
    assert sent2[len(sent1) :] == [m("assistant", "done"), m("user", "next"), internal2]


def test_openclaw_compaction_is_appended_to_the_tape() -> None:
    rw = rewriter()
    history = [m("system", SYSTEM), m("user", "read a"), m("assistant", "read"),
               m("user", "read b"), m("assistant", "read b too"), m("user", "fix it")]  # fmt: skip
    sent1, _, _ = send(rw, chat(*history), reply="fixed")  # the reply relayed ties the summary
    compacted = [m("system", SYSTEM), m("user", OPENCLAW_SUMMARY), m("assistant", "fixed"),
                 m("user", "now test it")]  # fmt: skip
    plan = rw.plan(chat(*compacted), NAMED)
    sent2 = list(plan.conv.messages)
    assert plan.applied == ["compaction:openclaw"] and extends(sent1, sent2)
    assert sent2[len(sent1) :] == [m("assistant", "fixed"), m("user", OPENCLAW_SUMMARY),
                                   m("user", "now test it")]  # fmt: skip
    assert plan.fallback is not None and plan.fallback.cause.kind == "over-budget"
    assert list(plan.fallback.conv.messages) == compacted
    rw.commit(plan)
    sent3, applied, _ = send(rw, chat(*compacted, m("assistant", "ok"), m("user", "again")))
    assert applied == [] and extends(sent2, sent3)


def test_openclaw_compaction_with_its_internal_context_last_is_appended() -> None:
    """OpenClaw ends every request with the same internal-context message: the compacted
    request's newest message is then not new, and the append did not fire."""
    rw = rewriter()
    internal = m("user", [{"type": "text", "text": "<<<BEGIN_OPENCLAW_INTERNAL_CONTEXT>>>\nx"}])
    history = [m("system", SYSTEM), m("user", "read a"), m("assistant", "read"),
               m("user", "fix it"), internal]  # fmt: skip
    sent1, _, _ = send(rw, chat(*history), reply="fixed")
    compacted = [m("system", SYSTEM), m("user", OPENCLAW_SUMMARY), m("assistant", "fixed"),
                 m("user", "now test it"), internal]  # fmt: skip
    plan = rw.plan(chat(*compacted), NAMED)
    sent2 = list(plan.conv.messages)
    assert plan.applied == ["compaction:openclaw"] and extends(sent1, sent2)
    assert sent2[len(sent1) :] == [m("assistant", "fixed"), m("user", OPENCLAW_SUMMARY),
                                   m("user", "now test it"), internal]  # fmt: skip


def test_a_compaction_that_also_changed_a_system_line_is_appended_too() -> None:
    """Claude Code's compacted request changes its first system line (the billing suffix
    follows the new first user message): the summary is still appended to what the slot
    holds, and the changed line goes to the newest turn."""
    rw = rewriter()
    history = [m("system", SYSTEM), m("user", "read a"), m("assistant", "read"),
               m("user", "read b"), m("assistant", "read b too"), m("user", "fix it")]  # fmt: skip
    sent1, _, _ = send(rw, chat(*history), reply="fixed")
    changed = SYSTEM.replace("Current date: 2026-11-21", "Current date: 2026-11-22")
    compacted = [m("system", changed), m("user", OPENCLAW_SUMMARY), m("assistant", "fixed"),
                 m("user", "now test it")]  # fmt: skip
    plan = rw.plan(chat(*compacted), NAMED)
    sent2 = list(plan.conv.messages)
    assert plan.applied == ["compaction:openclaw", "volatile"] and extends(sent1, sent2)
    assert "Current date: 2026-11-22" in sent2[-1].content
    other = [m("system", "Another agent entirely.\n"), *compacted[1:]]
    assert rw.plan(chat(*other), NAMED).applied == []  # a new system text: no append


def test_hermes_compaction_with_kept_head_and_tail() -> None:
    rw = rewriter()
    turns = [m("user" if i % 2 == 0 else "assistant", f"turn {i}") for i in range(10)]
    sent1, _, _ = send(rw, chat(m("system", SYSTEM), *turns))
    compacted = [m("system", SYSTEM), *turns[:3], m("assistant", HERMES_SUMMARY), *turns[7:],
                 m("assistant", "reply 9"), m("user", "new")]  # fmt: skip
    sent2, applied, _ = send(rw, chat(*compacted))
    assert applied == ["compaction:hermes"] and extends(sent1, sent2)
    assert sent2[len(sent1) :] == [m("assistant", "reply 9"), m("assistant", HERMES_SUMMARY),
                                   m("user", "new")]  # fmt: skip


def test_edited_history_starts_a_new_tape() -> None:
    rw = rewriter()
    send(rw, chat(m("system", SYSTEM), m("user", "a"), m("assistant", "b"), m("user", "c")))
    _, applied, cause = send(
        rw, chat(m("system", SYSTEM), m("user", "EDITED"), m("assistant", "b"), m("user", "c"),
                 m("assistant", "d"), m("user", "e"))
    )  # fmt: skip
    # the history after the first user message is the same: this conversation, edited
    assert cause == "edited-history" and applied == []
    send(rw, chat(m("system", SYSTEM), m("user", "x"), m("assistant", "y"), m("user", "z")))
    _, _, cause = send(
        rw, chat(m("system", SYSTEM), m("user", "x"), m("assistant", "Y2"), m("user", "z"),
                 m("assistant", "w"), m("user", "v"))
    )  # fmt: skip
    assert cause == "edited-history"


def test_reordered_tools_keep_the_first_order() -> None:
    a = {"type": "function", "function": {"name": "a", "parameters": {"type": "object"}}}
    b = {"function": {"parameters": {"type": "object"}, "name": "b"}, "type": "function"}
    rw = rewriter()
    plan = rw.plan(chat(m("user", "hi"), tools=[a, b]))
    rw.commit(plan)
    plan2 = rw.plan(chat(m("user", "hi"), m("assistant", "x"), m("user", "y"), tools=[b, a]))
    assert plan2.applied == ["tools"]
    assert [t["function"]["name"] for t in plan2.conv.tools or ()] == ["a", "b"]
    assert list(plan2.conv.tools[1]) == ["function", "type"]  # keys sorted


@pytest.mark.parametrize(
    ("spec", "rules"),
    [("all", {"tape", "volatile", "compaction", "tools"}), ("off", set()),
     ("tape,tools", {"tape", "tools"}), ("-volatile", {"tape", "compaction", "tools"})],
)  # fmt: skip
def test_rewrite_spec(spec: str, rules: set[str]) -> None:
    assert RewriteConfig.parse(spec).rules == rules


def test_rewrite_spec_rejects_unknown_rules() -> None:
    with pytest.raises(ValueError, match="unknown rewrite rule"):
        RewriteConfig.parse("tape,magic")


def test_off_is_a_pure_router() -> None:
    rw = rewriter("off")
    conv = chat(m("system", SYSTEM), m("user", "hi"))
    assert rw.plan(conv).conv is conv


def test_block_pattern_in_config_is_compiled() -> None:
    config = RewriteConfig.parse("all", [r"Current date: \S+"])
    assert config.patterns[0].pattern == re.compile(r"Current date: \S+").pattern


def test_compaction_keeps_a_reply_that_repeats_an_earlier_one() -> None:
    """A reply equal to an earlier reply is still a new message after the kept history."""
    rw = rewriter()
    prev = [m("system", SYSTEM), m("user", "long task"), m("assistant", "Ready."),
            m("user", "step 1")]  # fmt: skip
    sent1, _, _ = send(rw, chat(*prev))
    compacted = [m("system", SYSTEM), m("user", OPENCLAW_SUMMARY), m("user", "step 1"),
                 m("assistant", "Ready."), m("user", "step 2")]  # fmt: skip
    sent2, applied, _ = send(rw, chat(*compacted))
    assert applied == ["compaction:openclaw"]
    assert sent2[len(sent1) :] == [m("assistant", "Ready."), m("user", OPENCLAW_SUMMARY),
                                   m("user", "step 2")]  # fmt: skip


def test_a_new_conversation_with_the_same_system_is_not_a_transient_of_another() -> None:
    rw = rewriter()
    for doc in ("document A", "document B"):
        sent, applied, cause = send(rw, chat(m("system", SYSTEM), m("user", doc)))
        assert (sent, applied, cause) == ([m("system", SYSTEM), m("user", doc)], [], None)
    for doc in ("document A", "document B"):
        turn2 = [m("system", SYSTEM), m("user", doc), m("assistant", "same"), m("user", "next")]
        sent, applied, _ = send(rw, chat(*turn2))
        assert (sent, applied) == (turn2, [])


def test_content_spliced_into_the_first_user_message_moves_to_the_newest_turn() -> None:
    rw = rewriter()
    first = "Runtime: agent=main | session=1\nTask: fix the bug in the parser.\nBe careful.\n"
    turns = [m("assistant", "ok"), m("user", "step 1")]
    sent1, _, _ = send(rw, chat(m("system", SYSTEM), m("user", first), *turns))
    spliced = first.replace("session=1", "session=2")
    sent2, applied, cause = send(
        rw, chat(m("system", SYSTEM), m("user", spliced), *turns, m("assistant", "done"),
                 m("user", "step 2"))
    )  # fmt: skip
    assert applied == ["volatile"] and cause is None and extends(sent1, sent2)
    assert sent2[-1].content.endswith(
        '<context-update source="first user message">\n'
        "Runtime: agent=main | session=2\n</context-update>"
    )


ENV = (
    "# Environment\nWorking directory: /repo\nPlatform: linux\nShell: bash\n"
    "Model: local\nToday's date is 2026-12-03.\n"
)


@pytest.mark.parametrize("role", ["system", "developer"])
def test_a_changed_context_message_after_the_first_user_turn_moves_to_the_newest_turn(
    role: str,
) -> None:
    """Claude Code keeps its environment (date, cwd) in a system message after the first
    user message; at midnight only its date line changes. The slot keeps the message as it
    holds it; the new line goes to the newest turn, under the message's role."""
    rw = rewriter()
    head = [m("system", SYSTEM), m("user", "Fix the parser."), m(role, ENV)]
    turns = [m("assistant", "ok"), m("user", "step 1")]
    sent1, _, _ = send(rw, chat(*head, *turns))
    moved = ENV.replace("2026-12-03", "2026-12-04")
    sent2, applied, cause = send(
        rw, chat(*head[:2], m(role, moved), *turns, m("assistant", "done"), m("user", "step 2"))
    )  # fmt: skip
    assert applied == ["volatile"] and cause is None and extends(sent1, sent2)
    assert sent2[-1].content.endswith(
        f'<context-update source="{role} message">\nToday\'s date is 2026-12-04.\n</context-update>'
    )


def test_a_changed_context_message_needs_a_named_session() -> None:
    rw = rewriter()
    head = [m("system", SYSTEM), m("user", "Fix the parser."), m("system", ENV)]
    turns = [m("assistant", "ok"), m("user", "step 1")]
    rw.commit(rw.plan(chat(*head, *turns), Identity()))
    moved = [*head[:2], m("system", ENV.replace("03", "04")), *turns, m("assistant", "d"),
             m("user", "step 2")]  # fmt: skip
    plan = rw.plan(chat(*moved), Identity())
    assert plan.applied == [] and list(plan.conv.messages) == moved


def test_a_context_message_rewritten_whole_is_an_edit_not_a_volatile_change() -> None:
    rw = rewriter()
    head = [m("system", SYSTEM), m("user", "Fix the parser."), m("system", ENV)]
    turns = [m("assistant", "ok"), m("user", "step 1")]
    send(rw, chat(*head, *turns))
    other = [*head[:2], m("system", "Something else entirely.\n"), *turns,
             m("assistant", "d"), m("user", "step 2")]  # fmt: skip
    sent, applied, cause = send(rw, chat(*other))
    assert applied == [] and sent == other and cause == "edited-history"


def test_second_turn_of_another_conversation_is_not_a_splice() -> None:
    rw = rewriter()
    send(rw, chat(m("system", SYSTEM), m("user", "Task A\nline\nline\n")))
    sent, applied, _ = send(
        rw, chat(m("system", SYSTEM), m("user", "Task B\nline\nline\n"), m("assistant", "x"),
                 m("user", "y"))
    )  # fmt: skip
    assert applied == [] and sent[1].content == "Task B\nline\nline\n"


def test_claude_codes_billing_line_leaves_the_system_message_from_its_second_session() -> None:
    """Claude Code's first system line carries a suffix derived from each session's first
    prompt (``cc_version=2.1.328.593``): learned as volatile from the second session on, it
    goes to the newest turn, so sessions share the rest of the system prompt."""
    rw = rewriter()
    rules = "".join(f"Rule {i}: read before you edit.\n" for i in range(20))
    firsts = []
    for i, suffix in enumerate(("593", "281", "777")):
        system = (f"x-anthropic-billing-header: cc_version=2.1.328.{suffix}; "
                  f"cc_entrypoint=sdk-cli;You are a Claude agent.\n{rules}")  # fmt: skip
        plan = rw.plan(chat(m("system", system), m("user", f"task {i}")),
                       Identity(session=f"session-{i}"))  # fmt: skip
        rw.commit(plan)
        firsts.append(plan.conv.messages[0].content)
        if i:
            assert plan.applied == ["volatile"]
            assert f"cc_version=2.1.328.{suffix}" in plan.conv.messages[-1].content
    assert firsts[1] == firsts[2] == rules


def test_a_compaction_in_a_session_with_a_subagent_is_appended_to_its_own_tape() -> None:
    """Claude Code and Codex subagents share the parent's session and system prompt: a
    compacted request of the parent is tied to the parent's tape by the reply it keeps, not
    to whichever tape of the session spoke last (that would append the subagent's
    conversation); a compacted request tied to neither is not appended."""
    rw = rewriter()
    parent = [m("system", SYSTEM), m("user", "read a"), m("assistant", "read"),
              m("user", "fix it")]  # fmt: skip
    sent_parent, _, _ = send(rw, chat(*parent), reply="fixed")
    sub = [m("system", SYSTEM), m("user", "subagent: search the tree"), m("assistant", "found"),
           m("user", "subagent: and the tests")]  # fmt: skip
    send(rw, chat(*sub), reply="sub secret")  # the subagent spoke last
    compacted = [m("system", SYSTEM), m("user", OPENCLAW_SUMMARY), m("assistant", "fixed"),
                 m("user", "now test it")]  # fmt: skip
    plan = rw.plan(chat(*compacted), NAMED)
    sent = list(plan.conv.messages)
    texts = " ".join(str(x.content) for x in sent)
    assert "subagent" not in texts and "sub secret" not in texts
    assert plan.applied == ["compaction:openclaw"] and extends(sent_parent, sent)
    unknown = [m("system", SYSTEM), m("user", OPENCLAW_SUMMARY), m("assistant", "nobody's"),
               m("user", "now test it")]  # fmt: skip
    plan = rw.plan(chat(*unknown), NAMED)
    assert "subagent" not in " ".join(str(x.content) for x in plan.conv.messages)
    assert plan.applied == []
