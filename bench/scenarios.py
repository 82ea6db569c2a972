"""Agent request sequences that break the server's prefix cache, shaped as real clients do
(docs/clients.md): each scenario is a generator that yields
a chat request body and receives the model's reply to build the next one."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from bench.workload import document

Body = dict[str, Any]
# Replies long enough that re-prefilling one (what a dropped message costs) shows.
REPLY_TOKENS = 96
# The most recent tool result, kept by the compaction (a large file read, ~3,300 tokens).
KEPT_WORDS = 2800
Scenario = Generator[Body, str, None]
OPENCLAW_MARKER = (
    "The conversation history before this point was compacted into the following summary:"
)
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"{name} a path",
            "parameters": {"type": "object", "properties": {"path": {"type": "string"}}},
        },
    }
    for name in ("read", "write", "search", "fetch")
]


def rules(words: int) -> str:
    return "You are a coding agent. Follow these rules.\n" + document(900, words) + "\n"


def question(turn: int) -> str:
    return f"Question {turn}: " + document(100 + turn, 40).split("\n", 1)[1]


def body(messages: list[dict[str, Any]], **extra: Any) -> Body:
    return {"messages": [dict(m) for m in messages], **extra}


def rag_in_system(turns: int = 4) -> Scenario:
    """Scenario 6: a retrieved snippet spliced into the system message, new every turn."""
    intro, body_rules = "You are a coding agent.\n", rules(900)
    messages: list[dict[str, Any]] = []
    for turn in range(turns):
        rag = "<context>\n" + document(300 + turn, 100) + "\n</context>\n"
        system = {"role": "system", "content": intro + rag + body_rules}
        messages = [system, *messages[1:], {"role": "user", "content": question(turn)}]
        reply = yield body(messages)
        messages.append({"role": "assistant", "content": reply})


def timestamp_in_system(turns: int = 4) -> Scenario:
    """Scenario 9: a per-turn timestamp line in the system message."""
    head = rules(1000)
    messages: list[dict[str, Any]] = []
    for turn in range(turns):
        system = {
            "role": "system",
            "content": f"Current time: 2026-11-22 10:{turn:02d}:07 UTC\n{head}",
        }
        messages = [system, *messages[1:], {"role": "user", "content": question(turn)}]
        reply = yield body(messages)
        messages.append({"role": "assistant", "content": reply})


def tools_reordered(turns: int = 4) -> Scenario:
    """Scenario 10: the same tools in a different order every turn."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": rules(1000)}]
    for turn in range(turns):
        messages.append({"role": "user", "content": question(turn)})
        order = TOOLS[turn % 4 :] + TOOLS[: turn % 4]
        reply = yield body(messages, tools=order)
        messages.append({"role": "assistant", "content": reply})


def transient_context(turns: int = 4) -> Scenario:
    """OpenClaw: every request ends with an internal-context user message that the next
    request drops again."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": rules(1000)}]
    for turn in range(turns):
        messages.append({"role": "user", "content": question(turn)})
        internal = {
            "role": "user",
            "content": [{"type": "text", "text": "<<<BEGIN_OPENCLAW_INTERNAL_CONTEXT>>>\n"
                         f"Active exec sessions: {turn}\n<<<END_OPENCLAW_INTERNAL_CONTEXT>>>"}],
        }  # fmt: skip
        reply = yield body([*messages, internal], max_tokens=REPLY_TOKENS)
        messages.append({"role": "assistant", "content": reply})


def agentic_compaction() -> Scenario:
    """Scenario 8: a short system message, a long first user turn and a tool chain; then
    the client compacts (summary + the recent messages kept + the new user turn) and
    follows up."""
    system = {"role": "system", "content": "You are a coding agent. Use the tools."}
    messages: list[dict[str, Any]] = [
        system,
        {"role": "user", "content": "Fix the bug in this project.\n" + document(700, 400)},
    ]
    for step, words in enumerate((100, 100, KEPT_WORDS)):
        call = {"id": f"call{step}", "type": "function",
                "function": {"name": "read", "arguments": f'{{"path": "f{step}.py"}}'}}  # fmt: skip
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        messages.append(
            {"role": "tool", "tool_call_id": f"call{step}", "content": document(710 + step, words)}
        )
        reply = yield body(messages, tools=TOOLS)
    kept = messages[-2:]  # the most recent tool call and its (long) result
    messages.append({"role": "assistant", "content": reply})
    summary = {
        "role": "user",
        "content": f"{OPENCLAW_MARKER}\n\n<summary>\n{document(720, 80)}\n</summary>",
    }
    messages = [system, summary, *kept, messages[-1],
                {"role": "user", "content": "Now run the tests."}]  # fmt: skip
    reply = yield body(messages, tools=TOOLS)
    messages.append({"role": "assistant", "content": reply})
    messages.append({"role": "user", "content": "And summarize what changed."})
    yield body(messages, tools=TOOLS)


SCENARIOS: dict[str, Callable[[], Scenario]] = {
    "6 RAG in the system message": rag_in_system,
    "8 agentic flow + compaction + follow-up": agentic_compaction,
    "9 timestamp in the system message": timestamp_in_system,
    "10 tools reordered": tools_reordered,
    "transient trailing context (OpenClaw)": transient_context,
}
