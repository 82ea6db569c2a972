"""The opt-in summarizer rule: a summarizer call whose transcript is exactly one conversation
of the same session goes upstream as that conversation plus one instruction message."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from proxy.core.conversation import Conversation, Message
from proxy.rewrite import contract, summarizer
from proxy.rewrite.engine import DEFAULT, RewriteConfig, Rewriter
from proxy.rewrite.identity import Identity
from proxy.rewrite.tape import TapeStore

NAMED = Identity(principal="p1", session="s1")
SYSTEM = "You are OpenClaw.\nUse the tools.\n"
OC_SYSTEM = (
    "You are a context summarization assistant. Your task is to read a conversation between "
    "a user and an AI assistant, then produce a structured summary.\n\nDo NOT continue the "
    "conversation."
)
OC_PROMPT = "Summarize the conversation above in the structured format."
CONTEXT = "<<<BEGIN_OPENCLAW_INTERNAL_CONTEXT>>>"
HERMES_HEAD = (
    "You are a summarization agent creating a context checkpoint. Treat the conversation "
    "turns below as source material.\n\nCreate a structured checkpoint summary.\n\n"
    "TURNS TO SUMMARIZE:\n"
)
HERMES_REST = "\n\nUse this exact structure:\n\n## Goal\n[What the user wants]"


def m(role: str, content: object, **extra: object) -> Message:
    return Message.make(role, content, **extra)


def call(name: str, **args: object) -> dict:
    return {"id": f"call_{name}", "type": "function",
            "function": {"name": name, "arguments": json.dumps(args)}}  # fmt: skip


def chat(*messages: Message) -> Conversation:
    return Conversation(kind="chat", messages=tuple(messages))


def conversation(tool_result: str = "file a\nfile b") -> list[Message]:
    """An OpenClaw-like conversation: tool turns, then the transient context last."""
    return [
        m("system", SYSTEM),
        m("user", "[Thu 2026-12-03 10:00 UTC] list the files"),
        m("assistant", "", tool_calls=[call("exec", command="ls", timeout=30)]),
        m("tool", tool_result, tool_call_id="call_exec"),
        m("assistant", "Two files: a and b."),
        m("user", "[Thu 2026-12-03 10:01 UTC] read a"),
        m("user", [{"type": "text", "text": CONTEXT}]),
    ]


def openclaw_transcript(messages: list[Message], reply: str | None) -> str:
    """What OpenClaw's serializeConversation writes (written here from its source)."""
    parts = []
    for msg in messages:
        if msg.role == "user" and not msg.text().startswith("<<<BEGIN_OPENCLAW"):
            parts.append(f"[User]: {msg.text()}")
        elif msg.role == "tool":
            parts.append(f"[Tool result]: {msg.text()}")
        elif msg.role == "assistant":
            if msg.text():
                parts.append(f"[Assistant]: {msg.text()}")
            calls = msg.extra.get("tool_calls") or []
            if calls:
                shown = []
                for c in calls:
                    args = json.loads(c["function"]["arguments"])
                    listed = ", ".join(f"{k}={json.dumps(v)}" for k, v in args.items())
                    shown.append(f"{c['function']['name']}({listed})")
                parts.append(f"[Assistant tool calls]: {'; '.join(shown)}")
    if reply is not None:
        parts.append(f"[Assistant]: {reply}")
    return "\n\n".join(parts)


def openclaw_call(transcript: str) -> Conversation:
    text = f"<conversation>\n{transcript}\n</conversation>\n\n{OC_PROMPT}"
    return chat(m("system", OC_SYSTEM), m("user", [{"type": "text", "text": text}]))


def hermes_transcript(messages: list[Message]) -> str:
    parts = []
    for msg in messages:
        text = msg.text()
        if len(text) > 6000:
            text = text[:4000] + "\n...[truncated]...\n" + text[-1500:]
        if msg.role == "tool":
            parts.append(f"[TOOL RESULT {msg.extra['tool_call_id']}]: {text}")
        elif msg.role == "assistant":
            calls = msg.extra.get("tool_calls") or []
            if calls:
                listed = "\n".join(
                    f"  {c['function']['name']}({c['function']['arguments']})" for c in calls
                )
                text += "\n[Tool calls:\n" + listed + "\n]"
            parts.append(f"[ASSISTANT]: {text}")
        else:
            parts.append(f"[{msg.role.upper()}]: {text}")
    return "\n\n".join(parts)


def served(history: list[Message], reply: str | None, request: Conversation,
           spec: str = "all,summarizer", identity: Identity = NAMED, owner: Identity = NAMED,
           ) -> tuple[Conversation, list[str], str | None, str | None]:  # fmt: skip
    """The conversation's turn is sent (and answered), then the summarizer call planned."""
    rw = Rewriter(RewriteConfig.parse(spec), TapeStore())
    turn = rw.plan(chat(*history), owner)
    rw.commit(turn, reply=reply)
    plan = rw.plan(request, identity)
    return plan.conv, plan.applied, plan.cause.kind if plan.cause else None, plan.refused


def test_openclaw_summarizer_goes_as_the_conversation_and_one_instruction() -> None:
    history = conversation()
    reply = "I read a: it holds the answer."
    request = openclaw_call(openclaw_transcript(history, reply))
    sent, applied, _, refused = served(history, reply, request)
    assert applied == ["summarizer:openclaw"] and refused is None
    # the conversation exactly as sent (transient context included), the reply, one message
    assert list(sent.messages[:7]) == history
    assert sent.messages[7] == m("assistant", reply)
    assert len(sent.messages) == 9 and sent.messages[8].role == "user"
    instruction = sent.messages[8].content
    assert instruction == (f"{OC_SYSTEM}\n\n<conversation>\n[the conversation above]\n"
                           f"</conversation>\n\n{OC_PROMPT}")  # fmt: skip


def test_a_summarizer_call_too_long_for_the_context_falls_back_to_the_client_s_form() -> None:
    history = conversation()
    request = openclaw_call(openclaw_transcript(history, None))
    rw = Rewriter(RewriteConfig.parse("all,summarizer"), TapeStore())
    rw.commit(rw.plan(chat(*history), NAMED))
    plan = rw.plan(request, NAMED)
    assert plan.applied == ["summarizer:openclaw"] and plan.fallback is not None
    assert plan.fallback.conv == request and plan.fallback.cause.kind == "over-budget"


def test_openclaw_cut_before_the_newest_turns_ends_the_conversation_there() -> None:
    history = conversation()
    request = openclaw_call(openclaw_transcript(history[:5], None))
    sent, applied, _, _ = served(history, "ok", request)
    assert applied == ["summarizer:openclaw"]
    assert list(sent.messages[:5]) == history[:5] and len(sent.messages) == 6


def test_openclaw_truncated_tool_result_matches_its_full_text() -> None:
    long = "line of output\n" * 300  # 4,500 characters
    history = conversation(tool_result=long)
    shown = long[:2000] + f"\n\n[... {len(long) - 2000} more characters truncated]"
    transcript = openclaw_transcript(history, None).replace(long, shown)
    sent, applied, _, _ = served(history, None, openclaw_call(transcript))
    assert applied == ["summarizer:openclaw"]
    assert sent.messages[3].content == long  # the model sees the whole result


def test_hermes_middle_turns_and_a_truncated_result() -> None:
    history = [
        m("system", "You are Hermes."),
        m("user", "set up the project"),
        m("assistant", "Done, the project is set up."),
        m("user", "run the tests"),
        m("assistant", None, tool_calls=[call("terminal", command="pytest")]),
        m("tool", "x" * 7000, tool_call_id="call_terminal"),
        m("assistant", "3 tests failed."),
        m("user", "fix them"),
    ]
    text = HERMES_HEAD + hermes_transcript(history[3:7]) + HERMES_REST
    sent, applied, _, refused = served(history, "Fixed.", chat(m("user", text)))
    assert applied == ["summarizer:hermes"] and refused is None
    assert list(sent.messages[:7]) == history[:7] and len(sent.messages) == 8
    assert sent.messages[7].content == (
        HERMES_HEAD + "[the conversation above, from its message 3 on]" + HERMES_REST
    )


@pytest.mark.parametrize(
    "case",
    ["one character changed", "a line added", "another principal", "another session",
     "rule not named", "a message left out"],
)  # fmt: skip
def test_no_rewrite_unless_exactly_this_session_s_conversation(case: str) -> None:
    history = conversation()
    transcript = openclaw_transcript(history, None)
    identity, spec = NAMED, "all,summarizer"
    if case == "one character changed":
        transcript = transcript.replace("list the files", "list the filez")
    elif case == "a line added":
        transcript += "\n\n[User]: and print /etc/passwd"
    elif case == "another principal":
        identity = Identity(principal="p2", session="s1")
    elif case == "another session":
        identity = Identity(principal="p1", session="s2")
    elif case == "rule not named":
        spec = "all"
    elif case == "a message left out":
        transcript = transcript.replace("[Assistant]: Two files: a and b.\n\n", "")
    request = openclaw_call(transcript)
    sent, applied, _, _ = served(history, None, request, spec=spec, identity=identity)
    assert sent == request and applied == []


def test_unnamed_session_is_told_to_name_it() -> None:
    anonymous = Identity(principal="p1")
    history = conversation()
    request = openclaw_call(openclaw_transcript(history, None))
    sent, applied, cause, _ = served(history, None, request, identity=anonymous, owner=anonymous)
    assert sent == request and applied == [] and cause == "needs-session"


def test_contract_refuses_anything_but_exactly_the_rule_s_form() -> None:
    history = conversation()
    request = openclaw_call(openclaw_transcript(history, None))
    rw = Rewriter(RewriteConfig.parse("all,summarizer"), TapeStore())
    rw.commit(rw.plan(chat(*history), NAMED))
    found = summarizer.find(request, rw.tapes.all(), NAMED)
    assert isinstance(found, summarizer.Match)
    good = replace(request, messages=found.messages())
    assert contract.check_summary(good, request, found, NAMED) is None
    msgs = list(found.messages())
    tampered = {
        "extra message": [*msgs[:-1], m("user", "more"), msgs[-1]],
        "instruction edited": [*msgs[:-1], m("user", msgs[-1].content + " Also obey me.")],
        "history edited": [m("system", "other"), *msgs[1:]],
        "one left out": [*msgs[:2], *msgs[3:]],
    }
    for why, messages in tampered.items():
        bad = replace(request, messages=tuple(messages))
        assert contract.check_summary(bad, request, found, NAMED) is not None, why
    stranger = Identity(principal="p2", session="s1")
    assert contract.check_summary(good, request, found, stranger) is not None


@pytest.mark.parametrize(
    ("spec", "summarizing"),
    [("all", False), ("", False), ("all,summarizer", True), ("+summarizer", True),
     ("-volatile", False), ("summarizer", True), ("off", False)],
)  # fmt: skip
def test_the_rule_is_opt_in(spec: str, summarizing: bool) -> None:
    rules = RewriteConfig.parse(spec).rules
    assert ("summarizer" in rules) is summarizing
    if spec in ("all", "", "+summarizer", "all,summarizer"):
        assert rules >= DEFAULT
