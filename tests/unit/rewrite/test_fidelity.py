"""Fidelity: whatever the rules do, everything the client sent reaches the upstream, and
roles and tool-call/result pairing stay valid (property test over random sessions)."""

from __future__ import annotations

import re
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.core.conversation import Conversation, Message
from proxy.rewrite.compaction import SHAPES
from proxy.rewrite.engine import RewriteConfig, Rewriter
from proxy.rewrite.identity import Identity
from proxy.rewrite.tape import TapeStore
from proxy.rewrite.tools import canonical
from tests.unit.rewrite.test_summarizer import (
    CONTEXT,
    HERMES_HEAD,
    HERMES_REST,
    OC_PROMPT,
    OC_SYSTEM,
    hermes_transcript,
    openclaw_call,
    openclaw_transcript,
)

WORD = st.text(alphabet="abcdefghij xyz🎉é\n", min_size=1, max_size=24)
TOOLS = [
    {"type": "function", "function": {"name": f"t{i}", "parameters": {"type": "object"}}}
    for i in range(4)
]
ACTION = st.sampled_from(
    [
        "turn",
        "turn",
        "tool",
        "transient",
        "volatile",
        "compact",
        "edit",
        "splice",
        "env",
        "compact-date",
        "summarize",
    ]
)
LABEL = re.compile(r"^\[[A-Za-z ]+(?: [\w-]+)?\]: ")
CALL_LINE = re.compile(r"^(\[Assistant tool calls\]: | +)t\d\(.*\)$|^\[Tool calls:$|^\]$")


def lines(message: Message) -> list[str]:
    return [line for line in message.text().splitlines() if line.strip()]


def check(client: Conversation, sent: Conversation) -> None:
    """Each client message has its own sent message carrying its text (a user message may
    carry a context block after it); the lines of the system message and of the first user
    message may be spread over that message and context blocks."""
    sent_text = "\n".join(m.text() for m in sent.messages)
    used: set[int] = set()
    first_user = next((i for i, m in enumerate(client.messages) if m.role == "user"), None)
    for i, message in enumerate(client.messages):
        if message.role == "system" or i == first_user:
            for line in lines(message):
                assert line in sent_text, f"lost {line!r}"
            continue
        match = next(
            (
                i
                for i, m in enumerate(sent.messages)
                if i not in used and m.role == message.role and m.text().startswith(message.text())
            ),
            None,
        )
        assert match is not None, f"lost {message!r}"
        used.add(match)
    if client.tools is not None:
        assert Counter(map(canonical, client.tools)) == Counter(map(canonical, sent.tools or ()))
    seen_calls: set[str] = set()
    for message in sent.messages:
        for call in message.extra.get("tool_calls") or ():
            seen_calls.add(call["id"])
        if message.role == "tool":
            assert message.extra["tool_call_id"] in seen_calls
    last_client, last_sent = client.messages[-1], sent.messages[-1]
    assert last_sent.role == last_client.role
    assert last_sent.text().startswith(last_client.text())


def summarizer_call(conv: Conversation, reply: str, hermes: bool) -> tuple[Conversation, str]:
    """The client's summarizer call over its whole conversation (and the reply to it)."""
    if hermes:
        transcript = hermes_transcript([*conv.messages[1:], Message.make("assistant", reply)])
        text = HERMES_HEAD + transcript + HERMES_REST
        return Conversation(kind="chat", messages=(Message.make("user", text),)), transcript
    transcript = openclaw_transcript(list(conv.messages[1:]), reply)
    return openclaw_call(transcript), transcript


def check_summarized(sent: Conversation, transcript: str, hermes: bool,
                     earlier: list[Message]) -> None:  # fmt: skip
    """The summarizer rule's fidelity: every line of the transcript reaches the upstream as
    a message of that conversation, the instruction comes whole, and every message before
    it is one this client sent before."""
    *conversation, instruction = sent.messages
    heads = (HERMES_HEAD, HERMES_REST) if hermes else (OC_SYSTEM, OC_PROMPT)
    assert instruction.role == "user" and all(h in instruction.text() for h in heads)
    body = "\n".join(m.text() for m in conversation)
    for line in transcript.splitlines():
        if line.strip() and not CALL_LINE.match(line):
            assert LABEL.sub("", line) in body, f"lost {line!r}"
    assert all(m in earlier for m in conversation[:-1])


@settings(max_examples=150, deadline=None)
@given(
    actions=st.lists(ACTION, min_size=1, max_size=12),
    words=st.lists(WORD, min_size=40, max_size=40),
    rules=st.sets(st.sampled_from(["tape", "volatile", "compaction", "tools", "summarizer"])),
    order=st.permutations(range(4)),
    named=st.booleans(),
    with_env=st.booleans(),
)
def test_every_client_line_and_tool_reaches_the_upstream(
    actions: list[str],
    words: list[str],
    rules: set[str],
    order: list[int],
    named: bool,
    with_env: bool,
) -> None:
    rw = Rewriter(RewriteConfig(frozenset(rules)), TapeStore())
    identity = Identity(session="s") if named else Identity()
    system = "Stable rules.\nDate: 1\nMore rules.\n"
    # a context message after the first user turn (Claude Code's environment)
    env = Message.make("system", "Env\ncwd: /repo\nDate: 0\n")
    history: list[Message] = [Message.make("user", words[0]), *([env] if with_env else [])]
    transient: Message | None = None
    earlier: list[Message] = []
    last: tuple[Conversation, str] | None = None
    for step, action in enumerate(actions):
        if action == "summarize" and last is not None:
            call, transcript = summarizer_call(*last, hermes=step % 2 == 1)
            plan = rw.plan(call, identity)
            replied = [*earlier, Message.make("assistant", last[1])]
            if plan.applied:
                check_summarized(plan.conv, transcript, step % 2 == 1, replied)
            else:
                assert plan.conv == call
            rw.commit(plan)
        word = words[(step + 1) % len(words)]
        if action in ("volatile", "compact-date"):
            system = f"Stable rules.\nDate: {step + 1}\nMore rules.\n"
        if action == "edit" and len(history) > 2:
            history[0] = Message.make("user", "edited " + word)
        if action == "env" and len(history) > 1 and history[1].role == "system":
            history[1] = Message.make("system", f"Env\ncwd: /repo\nDate: {step}\n")
        if action == "splice":
            first = history[0].text().split("\n")
            history[0] = Message.make("user", "\n".join([f"Runtime {step}", *first[1:], "keep"]))
        if action in ("compact", "compact-date") and len(history) > 3:
            marker = SHAPES[0][2]
            history = [Message.make("user", f"{marker}\n<summary>{word}</summary>"), *history[-2:]]
        if action == "tool":
            call = {"id": f"c{step}", "type": "function",
                    "function": {"name": "t0", "arguments": "{}"}}  # fmt: skip
            history += [
                Message.make("assistant", None, tool_calls=[call]),
                Message.make("tool", word, tool_call_id=f"c{step}"),
            ]
        reply = "same reply" if step % 3 == 0 else "reply " + word  # repeated replies happen
        history += [Message.make("assistant", reply), Message.make("user", word)]
        transient = Message.make("user", [{"type": "text", "text": f"{CONTEXT}\nctx {step}"}])
        messages = [Message.make("system", system), *history]
        if action == "transient" and transient is not None:
            messages.append(transient)
        tools = tuple(TOOLS[i] for i in (order if step % 2 else range(4)))
        conv = Conversation(kind="chat", messages=tuple(messages), tools=tools)
        plan = rw.plan(conv, identity)
        check(conv, plan.conv)
        if plan.fallback is not None:
            check(conv, plan.fallback.conv)
        rw.commit(plan, reply="answer " + word)
        earlier += plan.conv.messages
        last = (conv, "answer " + word)


@settings(max_examples=150, deadline=None)
@given(
    actions=st.lists(st.sampled_from(["turn", "tool", "transient"]), min_size=1, max_size=8),
    words=st.lists(WORD, min_size=10, max_size=10),
    hermes=st.booleans(),
)
def test_a_summarizer_call_over_an_unchanged_conversation_is_served_from_it(
    actions: list[str], words: list[str], hermes: bool
) -> None:
    """Appended turns only: the rule always applies, and keeps the summarizer's fidelity."""
    rw = Rewriter(RewriteConfig.parse("all,summarizer"), TapeStore())
    identity = Identity(session="s")
    history: list[Message] = [Message.make("user", words[0])]
    earlier: list[Message] = []
    for step, action in enumerate(actions):
        word = words[(step + 1) % len(words)]
        if action == "tool":
            call = {"id": f"c{step}", "type": "function",
                    "function": {"name": "t0", "arguments": "{}"}}  # fmt: skip
            history += [Message.make("assistant", None, tool_calls=[call]),
                        Message.make("tool", word, tool_call_id=f"c{step}")]  # fmt: skip
        history += [Message.make("assistant", "reply " + word), Message.make("user", word)]
        context = [Message.make("user", f"{CONTEXT}\nctx {step}")] if action == "transient" else []
        conv = Conversation(kind="chat", messages=(Message.make("system", "Rules."), *history,
                                                   *context))  # fmt: skip
        plan = rw.plan(conv, identity)
        rw.commit(plan, reply="answer " + word)
        earlier += plan.conv.messages
    call, transcript = summarizer_call(conv, "answer " + word, hermes)
    plan = rw.plan(call, identity)
    if hermes and "transient" in actions[:-1]:
        # the tape keeps a dropped context message in place; Hermes' transcript lacks it
        assert plan.conv == call
        return
    assert plan.applied == ["summarizer:" + ("hermes" if hermes else "openclaw")]
    replied = [*earlier, Message.make("assistant", "answer " + word)]
    check_summarized(plan.conv, transcript, hermes, replied)
