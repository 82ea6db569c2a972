"""Fidelity through the two agent protocols: random Claude Code-like sessions in Anthropic
Messages and Codex-like sessions in OpenAI Responses, turn by turn through the dialect and
the rules: every text line and tool call the client sent reaches the upstream chat body, and
nothing the client did not send in this conversation does (the contract's own check)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.core.conversation import Conversation
from proxy.dialects.anthropic_messages import DIALECT as MESSAGES
from proxy.dialects.openai_responses import DIALECT as RESPONSES
from proxy.rewrite import contract
from proxy.rewrite.engine import RewriteConfig, Rewriter
from proxy.rewrite.identity import Identity
from proxy.rewrite.tape import TapeStore
from tests.unit.rewrite.test_fidelity import check

WORD = st.text(alphabet="abcdefghij xyz🎉é\n", min_size=1, max_size=24)
ACTION = st.sampled_from(["turn", "turn", "tool", "date", "flip", "marker", "billing"])


def body_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def sent_text(chat: dict[str, Any]) -> str:
    out = []
    for m in chat["messages"]:
        content = m.get("content")
        if isinstance(content, str):
            out.append(content)
        elif isinstance(content, list):
            out += [p.get("text", "") for p in content if isinstance(p, dict)]
        for call in m.get("tool_calls") or []:
            out.append(call["function"]["arguments"])
    return "\n".join(out)


def run(rw: Rewriter, dialect: Any, body: dict[str, Any], texts: list[str]) -> None:
    conv: Conversation = dialect.parse(body)
    plan = rw.plan(conv, Identity(session="s"))
    check(conv, plan.conv)
    assert contract.check(plan.conv, conv, plan.continued, plan.identity) is None
    upstream = sent_text(dialect.render(plan.conv))
    for text in texts:  # every line the client wrote, whatever block it was in
        for line in body_lines(text):
            assert line in upstream, f"lost {line!r}"
    rw.commit(plan, reply="ok")


@settings(max_examples=100, deadline=None)
@given(actions=st.lists(ACTION, min_size=1, max_size=10),
       words=st.lists(WORD, min_size=30, max_size=30))  # fmt: skip
def test_anthropic_sessions_reach_the_upstream_whole(actions: list[str], words: list[str]) -> None:
    rw = Rewriter(RewriteConfig.parse("all"), TapeStore())
    billing, date = "x-anthropic-billing-header: cc_version=2.1.328.593;", 1
    history: list[dict[str, Any]] = [{"role": "user", "content": [
        {"type": "text", "text": "<system-reminder>attribution</system-reminder>"},
        {"type": "text", "text": words[0]}]}]  # fmt: skip
    for step, action in enumerate(actions):
        word = words[(step + 1) % len(words)]
        if action == "date":
            date = step + 2
        if action == "billing":
            billing = f"x-anthropic-billing-header: cc_version=2.1.328.{step:03d};"
        env = {"role": "system", "content": f"# Environment\ncwd: /repo\nDate: {date}\n"}
        if action == "tool":
            history += [
                {
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": "reading"},
                        {
                            "type": "tool_use",
                            "id": f"t{step}",
                            "name": "read",
                            "input": {"p": word},
                        },
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": f"t{step}",
                            "content": [{"type": "text", "text": word}],
                        }
                    ],
                },
            ]
        history += [
            {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
            {"role": "user", "content": [{"type": "text", "text": word}]},
        ]
        if action == "flip":  # an earlier newest message becomes a string
            for m in history[1:-1]:
                if (
                    isinstance(m["content"], list)
                    and len(m["content"]) == 1
                    and m["content"][0].get("type") == "text"
                ):
                    m["content"] = m["content"][0]["text"]
        if action == "marker":
            history[-1]["content"][-1]["cache_control"] = {"type": "ephemeral"}
        body = {"model": "m", "max_tokens": 8,
                "system": [{"type": "text", "text": billing},
                           {"type": "text", "text": "You are an agent.\nBe brief.\n"}],
                "messages": [history[0], env, *history[1:]]}  # fmt: skip
        texts = [billing, env["content"], *message_texts(body["messages"])]
        run(rw, MESSAGES, body, texts)


def message_texts(messages: list[dict[str, Any]]) -> list[str]:
    out = []
    for m in messages:
        content = m["content"]
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        for b in blocks:
            if b.get("type") == "text":
                out.append(b["text"])
            elif b.get("type") == "tool_result":
                out += [c["text"] for c in b["content"]]
    return out


@settings(max_examples=100, deadline=None)
@given(actions=st.lists(ACTION, min_size=1, max_size=10),
       words=st.lists(WORD, min_size=30, max_size=30))  # fmt: skip
def test_responses_sessions_reach_the_upstream_whole(actions: list[str], words: list[str]) -> None:
    rw = Rewriter(RewriteConfig.parse("all"), TapeStore())
    base = {"type": "message", "role": "developer", "content": [
        {"type": "input_text", "text": "You are Codex.\nBe careful.\n"}]}  # fmt: skip
    date = 1
    history: list[dict[str, Any]] = [{"type": "message", "role": "user", "content": [
        {"type": "input_text", "text": words[0]}]}]  # fmt: skip
    for step, action in enumerate(actions):
        word = words[(step + 1) % len(words)]
        if action == "date":
            date = step + 2
        env = {"type": "message", "role": "user", "content": [{"type": "input_text", "text":
               f"<environment_context>\n<cwd>/repo</cwd>\n<date>{date}</date>\n"
               "</environment_context>"}]}  # fmt: skip
        if action == "tool":
            history += [
                {
                    "type": "function_call",
                    "call_id": f"c{step}",
                    "name": "exec",
                    "arguments": json.dumps({"cmd": word}),
                },
                {"type": "function_call_output", "call_id": f"c{step}", "output": word},
            ]
        history += [{"type": "message", "role": "assistant",
                     "content": [{"type": "output_text", "text": "ok"}]},
                    {"type": "message", "role": "user",
                     "content": [{"type": "input_text", "text": word}]}]  # fmt: skip
        body = {"model": "m", "input": [base, env, *history], "store": False,
                "prompt_cache_key": "s"}  # fmt: skip
        texts = [
            p["text"]
            for item in body["input"]
            for p in item.get("content") or []
            if isinstance(p, dict) and "text" in p
        ]
        texts += [item["output"] for item in history if item.get("type") == "function_call_output"]
        run(rw, RESPONSES, body, texts)
