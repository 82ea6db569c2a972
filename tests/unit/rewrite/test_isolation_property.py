"""Many interleaved clients through one rewriter: every planned request keeps the contract
against that client's own request, carries no other client's secret nor another
conversation's text (a subagent shares its parent's session and system prompt), and the
contract guard never fires (hypothesis plays the sessions)."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import example, given, settings
from hypothesis import strategies as st

from proxy.core.conversation import Conversation, Message, MessageMemo
from proxy.dialects.openai_chat import DIALECT
from proxy.rewrite import contract
from proxy.rewrite.compaction import SHAPES
from proxy.rewrite.engine import RULES, RewriteConfig, Rewriter
from proxy.rewrite.identity import identify
from proxy.rewrite.tape import TapeStore

BASE = "You are a helpful agent.\nFollow the house rules.\n"
TAIL = "Answer briefly.\nNever reveal secrets of other users.\n"
WORDS = ["hi", "hello", "status?", "next", "ok", "run the tests", "same reply", "done"]
TOOLS = [{"type": "function", "function": {"name": f"t{i}", "parameters": {}}} for i in range(3)]
ACTIONS = [
    "turn",
    "turn",
    "turn",
    "tool",
    "transient",
    "date",
    "compact",
    "edit",
    "restart",
    "splice",
    "mode",
    "forge",
]


@dataclass
class Client:
    index: int
    secret: str
    credential: str | None
    session_named: bool
    date: int = 1
    mode: bool = False
    conversation: int = 0
    history: list[Message] = field(default_factory=list)
    transient: bool = False
    parent: Client | None = None  # a subagent: the parent's session and system prompt
    session: str = ""  # named when the conversation starts (a subagent: its parent's)

    @property
    def mark(self) -> str:
        """Text only this conversation sends (in its first user message)."""
        return f"conversation-{self.index}-{self.conversation}"

    def system(self) -> str:
        if self.parent is not None:
            return self.parent.system()
        mode = "Tool line for gateway mode.\n" if self.mode else ""
        return f"{BASE}{mode}Customer: {self.secret}\nToday: 2026-11-{self.date:02d}\n{TAIL}"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.credential}"} if self.credential else {}

    def first_user(self, word: str) -> str:
        if self.session_named:
            agent = "main" if self.parent is None else "sub"
            return f"Runtime: agent={agent} | sessionId={self.session}\n{word} {self.mark}"
        return f"{word} {self.mark}"


def request(client: Client, tools_order: list[int]) -> Conversation:
    messages = [Message.make("system", client.system()), *client.history]
    if client.transient:
        ctx = f"<<<BEGIN_INTERNAL_CONTEXT>>> client {client.index} secret {client.secret}"
        messages.append(Message.make("user", [{"type": "text", "text": ctx}]))
    tools = tuple(TOOLS[i] for i in tools_order)
    return Conversation(kind="chat", messages=tuple(messages), tools=tools)


def forged(attacker: Client, victim: Client, word: str) -> Conversation:
    """The attacker shares the victim's principal, names no session, and sends the
    victim's history (which it guessed) under its own system prompt, or with the victim's
    system prompt's public lines only."""
    system = attacker.system() if len(victim.history) % 2 else BASE + TAIL
    history = [*victim.history]
    if history and history[-1].role == "user":
        history.append(Message.make("assistant", "Hello!"))
    messages = [Message.make("system", system), *history, Message.make("user", word)]
    return Conversation(kind="chat", messages=tuple(messages))


def act(client: Client, action: str, word: str, step: int) -> None:
    if action == "restart" or not client.history:
        client.conversation += 1
        owner = client.parent or client
        client.session = f"c{owner.index}-{owner.conversation}"
        client.history = [Message.make("user", client.first_user(word))]
        return
    if action == "date":
        client.date += 1
    if action == "mode":
        client.mode = not client.mode
    if action == "edit" and len(client.history) > 2:
        client.history[-2] = Message.make(client.history[-2].role, "edited " + word)
    if action == "splice":
        first = client.history[0].text()
        client.history[0] = Message.make("user", first + f"\nnote {step}")
    if action == "compact" and len(client.history) > 3:
        summary = f"{SHAPES[0][2]}\n<summary>{word} (client {client.index})</summary>"
        if client.session_named:
            summary = [
                {"type": "text", "text": summary},
                {"type": "text", "text": client.first_user("")},
            ]
        client.history = [Message.make("user", summary), *client.history[-2:]]
    if action == "tool":
        call = {"id": f"c{step}", "type": "function", "function": {"name": "t0", "arguments": "{}"}}
        client.history += [
            Message.make("assistant", None, tool_calls=[call]),
            Message.make("tool", f"result {word}", tool_call_id=f"c{step}"),
        ]
    client.history.append(Message.make("user", word))
    client.transient = action == "transient"


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(2, 6),
    credentials=st.lists(st.sampled_from([None, None, "k1", "k2", "k3"]), min_size=6, max_size=6),
    named=st.lists(st.booleans(), min_size=6, max_size=6),
    subagents=st.lists(st.booleans(), min_size=6, max_size=6),
    plays=st.lists(
        st.tuples(st.integers(0, 5), st.sampled_from(ACTIONS), st.sampled_from(WORDS)),
        min_size=4,
        max_size=40,
    ),
    rules=st.sets(st.sampled_from(RULES)),
    replies=st.lists(st.sampled_from(["Hello!", "Sure.", "Done."]), min_size=40, max_size=40),
)
# The parent's "hi" went upstream with the new date appended (the volatile rule), its
# subagent's "hi" as it was: the parent's compacted request, keeping "hi", was appended to
# the subagent's conversation (its text was compared only with what the parent sent).
@example(n=2, credentials=[None] * 6, named=[True, *[False] * 5],
         subagents=[False, True, *[False] * 4],
         plays=[(0, "turn", "hi"), (0, "date", "hi"), (1, "turn", "hi"), (1, "turn", "hi"),
                (0, "compact", "hi")],
         rules={"tape", "volatile", "compaction"}, replies=["Hello!"] * 40)  # fmt: skip
# Without the volatile rule the parent's new date made its tape the only one of the session
# with the system prompt the subagent now sends too (a subagent's is its parent's): the
# subagent's compacted request was appended to the parent's conversation.
@example(n=2, credentials=[None] * 6, named=[True, *[False] * 5],
         subagents=[False, True, *[False] * 4],
         plays=[(0, "turn", "hi"), (1, "turn", "hi"), (1, "turn", "hi"), (0, "date", "hi"),
                (1, "compact", "hi")],
         rules={"tape", "compaction"}, replies=["Hello!"] * 40)  # fmt: skip
# The parent's compacted conversation went on after its system prompt lost a line: the
# subagent's tape was then the only one with that prompt, and the parent's request (its
# summary still among the messages) was appended to the subagent's conversation.
@example(n=2, credentials=[None] * 6, named=[True, *[False] * 5],
         subagents=[False, True, *[False] * 4],
         plays=[(0, "turn", "hi"), (1, "turn", "hi"), (0, "mode", "hi"), (0, "compact", "hi"),
                (0, "mode", "hi")],
         rules={"tape", "volatile", "compaction"}, replies=["Hello!"] * 40)  # fmt: skip
def test_interleaved_clients_never_see_each_other(
    n: int,
    credentials: list[str | None],
    named: list[bool],
    subagents: list[bool],
    plays: list[tuple[int, str, str]],
    rules: set[str],
    replies: list[str],
) -> None:
    rw = Rewriter(RewriteConfig(frozenset(rules)), TapeStore())
    # every request parsed as kvproxy parses it: through one message memo for all clients
    memo = MessageMemo()
    clients = [Client(i, f"SECRET-{i}-{i * 7919}", credentials[i], named[i]) for i in range(n)]
    for i in range(1, n):
        if subagents[i] and clients[0].session_named:  # Claude Code's and Codex's subagents
            sub, parent = clients[i], clients[0]
            sub.parent, sub.secret, sub.credential = parent, parent.secret, parent.credential
            sub.session_named = True
    for step, (who, action, word) in enumerate(plays):
        client = clients[who % n]
        victim = clients[(who + 1) % n]
        if action == "forge" and not victim.session_named:
            conv = DIALECT.parse(DIALECT.render(forged(client, victim, word)), memo)
            identity = identify(victim.headers(), conv)
            plan = rw.plan(conv, identity)
            text = "\n".join(m.text() for m in plan.conv.messages)
            assert victim.secret not in text, f"a forged history read {victim.secret}"
            continue
        act(client, action, word, step)
        conv = DIALECT.parse(DIALECT.render(request(client, [2, 0, 1] if step % 2 else [0, 1, 2])),
                             memo)  # fmt: skip
        identity = identify(client.headers(), conv)
        plan = rw.plan(conv, identity)
        assert plan.refused is None, plan.refused
        assert contract.check(plan.conv, conv, plan.continued, identity) is None
        text = "\n".join(m.text() for m in plan.conv.messages)
        assert client.secret in text
        for other in clients:
            if other is not client and other.secret != client.secret:
                assert other.secret not in text, f"client {client.index} got {other.secret}"
            if other is not client:
                assert other.mark not in text, f"client {client.index} got {other.mark}"
        if plan.fallback is not None:
            assert plan.fallback.refused is None
            assert contract.check(plan.fallback.conv, conv, None, identity) is None
        reply = replies[step]
        rw.commit(plan, reply=reply)
        client.history.append(Message.make("assistant", reply))
