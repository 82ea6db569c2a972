"""The four agent clients' request shapes for `make bench-trace`, scaled down.

Each session keeps its conversation in one neutral form (OpenAI chat messages) and renders
every request the way its client sends it: OpenClaw and Hermes as OpenAI chat, Claude Code
as Anthropic Messages (``/v1/messages?beta=true``), Codex as OpenAI Responses
(``/v1/responses``), after the captures in tests/data/clients/ and the notes of
docs/clients.md: where each puts the date, what changes between turns, what a compaction's
summarizer call and the compacted request look like. Each render also gives the neutral
chat form of the same prompt, which the bench tokenizes for the ceiling. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import json
import random
import uuid
from dataclasses import dataclass, field
from typing import Any

from bench.workload import document

KINDS = ("openclaw", "hermes", "claude", "codex")
# Scaled sizes (words of filler prose): the real prompts are 1.5k-10k tokens, which a
# 2-core machine prefills at ~40-80 tokens/s; these keep the ratios, not the sizes.
SYSTEM_WORDS = {"openclaw": 200, "hermes": 120, "claude": 140, "codex": 160}
TOOLS = {"openclaw": 5, "hermes": 6, "claude": 5, "codex": 3}
USER_WORDS = 12
RESULT_WORDS = 20  # plus 15 per step: later tool calls read more
# A compaction starts once a request's prompt passes this many tokens (each client's
# threshold, a fraction of its context window, scaled like the prompts).
COMPACT_AT = {"openclaw": 565, "hermes": 342, "claude": 500, "codex": 495}
TOOL_NAMES = ("read", "exec", "grep", "write", "web_fetch", "list")

Chat = dict[str, Any]  # {"messages": [...], "tools": [...]}: the neutral form


@dataclass
class Outgoing:
    """One request as its client sends it, and the same prompt in the neutral chat form."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    chat: Chat


@dataclass
class Session:
    kind: str
    name: str  # "claude-1", "claude-1/sub"
    family: str  # the ceiling's session: a subagent counts with its parent
    sid: str
    started_day: int
    subagent: bool = False
    parent_sid: str | None = None  # a subagent's parent: the session id its client sends
    history: list[dict[str, Any]] = field(default_factory=list)  # chat form, no system
    pending: str | None = None  # the last reply, not yet echoed
    calls: int = 0
    window: int = 0  # Codex's window number, +1 per compaction
    compacted: bool = False
    ids: dict[int, str] = field(default_factory=dict)  # Codex input item ids by position

    @property
    def header_sid(self) -> str:
        return self.parent_sid or self.sid


def sid_of(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def date_of(day: int) -> str:
    return f"2026-12-{3 + day:02d}"


def system_text(kind: str) -> str:
    heads = {
        "openclaw": "You are a personal assistant running inside OpenClaw.",
        "hermes": "You are Hermes Agent, an intelligent AI assistant created by Nous Research.",
        "claude": "You are an agent working with the user toward their goals.",
        "codex": "You are a coding agent running in the Codex CLI, a terminal-based assistant.",
    }
    body = document(7000 + KINDS.index(kind), SYSTEM_WORDS[kind]).split("\n", 1)[1]
    return f"{heads[kind]}\n{body}"


def chat_tools(kind: str) -> list[dict[str, Any]]:
    return [
        {"type": "function", "function": {
            "name": name, "description": f"{kind} tool {name}: " + " ".join(
                document(800 + i, 12).split()[2:12]),
            "parameters": {"type": "object", "properties": {"path": {"type": "string"}},
                           "required": ["path"]}}}
        for i, name in enumerate(TOOL_NAMES[: TOOLS[kind]])
    ]  # fmt: skip


def user_text(session: Session, n: int) -> str:
    seed = int(hashlib.sha256(f"{session.name}/{n}".encode()).hexdigest()[:8], 16)
    return f"Task {n}: " + document(seed, USER_WORDS).split("\n", 1)[1]


def tool_result(session: Session, n: int) -> str:
    seed = int(hashlib.sha256(f"{session.name}/r{n}".encode()).hexdigest()[:8], 16)
    return document(seed, RESULT_WORDS + 15 * n).split("\n", 1)[1]


# -- what a step appends to the neutral history -----------------------------------------------
def echo(session: Session, tool: bool) -> None:
    """The last reply goes back as the assistant message (with a tool call on a tool turn:
    the client ran the tool and sends its result)."""
    if session.pending is None:
        return
    n = session.calls
    msg: dict[str, Any] = {"role": "assistant", "content": session.pending}
    if tool:
        name = TOOL_NAMES[n % TOOLS[session.kind]]
        msg["tool_calls"] = [{"id": f"call_{n}", "type": "function", "function": {
            "name": name, "arguments": json.dumps({"path": f"src/f{n}.py"})}}]  # fmt: skip
    session.history.append(msg)
    if tool:
        session.history.append(
            {"role": "tool", "tool_call_id": f"call_{n}", "content": tool_result(session, n)}
        )
    session.pending = None


def turn(session: Session, tool: bool, day: int) -> None:
    """One agent step: a new user message, or (tool) the result of the tool it called.
    OpenClaw stamps each user message with the time it was sent."""
    had_reply = session.pending is not None
    echo(session, tool and had_reply)
    if not (tool and had_reply):
        text = user_text(session, session.calls)
        if not session.history and session.kind == "openclaw":
            text = f"Runtime: agent=main sessionId={session.sid}\n{text}"
        if session.kind == "openclaw":
            minute = f"{10 + session.calls % 12:02d}:{session.calls * 7 % 60:02d}"
            text = f"[{date_of(day)} {minute} UTC] {text}"
        session.history.append({"role": "user", "content": text})


# -- OpenAI chat: OpenClaw and Hermes ---------------------------------------------------------
def openclaw_system(day: int) -> str:
    return f"{system_text('openclaw')}\n## Current Date & Time\n{date_of(day)} (UTC)"


def chat_request(session: Session, day: int, summarizer: str | None = None) -> Outgoing:
    kind = session.kind
    if kind == "openclaw":
        system = openclaw_system(day)
        ua = "OpenAI/JS 6.1.0"
        extra: list[dict[str, Any]] = [] if summarizer else [
            {"role": "user", "content": f"<<<BEGIN_OPENCLAW_INTERNAL_CONTEXT>>>\nturn "
             f"{session.calls} of {session.sid[:8]}; unread: 0\n"
             "<<<END_OPENCLAW_INTERNAL_CONTEXT>>>"}]  # fmt: skip
    else:
        system = f"{system_text('hermes')}\nConversation started: {date_of(session.started_day)}"
        ua = "OpenAI/Python 2.3.0"
        extra = []
    tools = chat_tools(kind)
    if summarizer is not None and kind == "openclaw":
        text = f"<conversation>\n{openclaw_transcript(session.history)}\n</conversation>\n\n"
        messages = [
            {"role": "system", "content": summarizer},
            {"role": "user", "content": [{"type": "text", "text": text + OPENCLAW_ASK}]},
        ]
        tools = []
    elif summarizer is not None:  # Hermes summarizes the turns between its head and tail
        text = HERMES_HEAD + hermes_transcript(session.history[2:-2]) + HERMES_TAIL
        messages = [{"role": "user", "content": text}]
        tools = []
    else:
        messages = [{"role": "system", "content": system}, *session.history, *extra]
    body = {"model": "smollm2", "messages": messages, "stream": True, "max_tokens": 8,
            "temperature": 0, "stream_options": {"include_usage": True}}  # fmt: skip
    if tools:
        body["tools"] = tools
    chat = {"messages": messages, "tools": tools}
    return Outgoing("/v1/chat/completions", {"User-Agent": ua}, body, chat)


def openclaw_transcript(history: list[dict[str, Any]]) -> str:
    """OpenClaw's ``serializeConversation`` (its compaction module), for these messages."""
    parts = []
    for m in history:
        text = m.get("content") or ""
        if m["role"] == "user":
            parts.append(f"[User]: {text}")
        elif m["role"] == "tool":
            parts.append(f"[Tool result]: {text}")
        else:
            if text:
                parts.append(f"[Assistant]: {text}")
            calls = [c["function"] for c in m.get("tool_calls") or ()]
            if calls:
                shown = "; ".join(f"{c['name']}({listed(c['arguments'])})" for c in calls)
                parts.append(f"[Assistant tool calls]: {shown}")
    return "\n\n".join(parts)


def listed(arguments: str) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in json.loads(arguments).items())


def hermes_transcript(history: list[dict[str, Any]]) -> str:
    """Hermes' ``_serialize_for_summary`` (no message here is long enough to be cut)."""
    parts = []
    for m in history:
        text = m.get("content") or ""
        if m["role"] == "tool":
            parts.append(f"[TOOL RESULT {m['tool_call_id']}]: {text}")
        elif m["role"] == "assistant":
            calls = [c["function"] for c in m.get("tool_calls") or ()]
            if calls:
                text += "\n[Tool calls:\n" + "\n".join(
                    f"  {c['name']}({c['arguments']})" for c in calls) + "\n]"  # fmt: skip
            parts.append(f"[ASSISTANT]: {text}")
        else:
            parts.append(f"[{m['role'].upper()}]: {text}")
    return "\n\n".join(parts)


# -- Anthropic Messages: Claude Code ----------------------------------------------------------
CC_REMINDER = "<system-reminder>Attribution for git commits: none.</system-reminder>"
CC_COMPACT = (
    "CRITICAL: Respond with TEXT ONLY. Do NOT call any tools. Your task is to create "
    "a detailed summary of the conversation so far, inside <summary></summary>."
)


def cc_env(day: int, reordered: bool) -> str:
    env = "# Environment\n - Primary working directory: /work/app\n - Platform: linux"
    tools = "The following deferred tools are now available via ToolSearch: NotebookEdit."
    date = f"Today's date is {date_of(day)}."
    return f"{tools}\n{env}\n{date}" if reordered else f"{env}\n{tools}\n{date}"


def cc_system(first_user: str) -> list[dict[str, Any]]:
    suffix = hashlib.sha256(first_user.encode()).hexdigest()[:3]
    eph = {"type": "ephemeral"}
    return [
        {"type": "text", "text": f"x-anthropic-billing-header: cc_version=2.1.328.{suffix}; "
                                 "cc_entrypoint=sdk-cli;"},
        {"type": "text", "text": "You are a Claude agent, built on Anthropic's Claude Agent SDK.",
         "cache_control": eph},
        {"type": "text", "text": system_text("claude"), "cache_control": eph},
    ]  # fmt: skip


def cc_message(msg: dict[str, Any], newest: bool) -> dict[str, Any]:
    eph = {"type": "ephemeral"}
    if msg["role"] == "tool":
        block = {"type": "tool_result", "tool_use_id": msg["tool_call_id"],
                 "content": msg["content"]}  # fmt: skip
        if newest:
            block["cache_control"] = eph
        return {"role": "user", "content": [block]}
    if msg["role"] == "assistant":
        blocks: list[dict[str, Any]] = [{"type": "text", "text": msg["content"]}]
        for call in msg.get("tool_calls") or []:
            blocks.append({"type": "tool_use", "id": call["id"], "name": call["function"]["name"],
                           "input": json.loads(call["function"]["arguments"])})  # fmt: skip
        if newest:
            blocks[-1]["cache_control"] = eph
        return {"role": "assistant", "content": blocks}
    if newest:
        return {"role": msg["role"], "content": [
            {"type": "text", "text": msg["content"], "cache_control": eph}]}  # fmt: skip
    return {"role": msg["role"], "content": msg["content"]}


def claude_request(session: Session, day: int, summarize: bool = False) -> Outgoing:
    first = session.history[0]
    blocks = first["content"] if isinstance(first["content"], list) else [first["content"]]
    opening = {
        "role": "user",
        "content": [
            {"type": "text", "text": CC_REMINDER},
            *({"type": "text", "text": t} for t in blocks),
        ],
    }
    env = {"role": "system", "content": cc_env(day, session.compacted)}
    rest = list(session.history[1:])
    if summarize:
        rest.append({"role": "user", "content": CC_COMPACT})
    wire_rest = [cc_message(m, newest=(i == len(rest) - 1 and not summarize))
                 for i, m in enumerate(rest)]  # fmt: skip
    if summarize and len(wire_rest) >= 2:  # cache_control moves onto the last assistant block
        wire_rest[-2] = cc_message(rest[-2], newest=True)
    wire_env = (
        env
        if rest
        else {
            "role": "system",
            "content": [
                {"type": "text", "text": env["content"], "cache_control": {"type": "ephemeral"}}
            ],
        }
    )
    system = cc_system(" ".join(blocks))
    meta = json.dumps({"device_id": "c" * 64, "account_uuid": "", "session_id": session.header_sid})
    body = {
        "model": "smollm2", "messages": [opening, wire_env, *wire_rest], "system": system,
        "tools": [{"name": t["function"]["name"], "description": t["function"]["description"],
                   "input_schema": t["function"]["parameters"]} for t in chat_tools("claude")],
        "metadata": {"user_id": meta}, "max_tokens": 8, "temperature": 0,
        "thinking": {"type": "adaptive", "display": "omitted"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "high"}, "stream": True,
    }  # fmt: skip
    headers = {"x-api-key": "sk-ant-local", "anthropic-version": "2023-06-01",
               "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14",
               "x-app": "cli", "User-Agent": "claude-cli/2.1.328 (external, sdk-cli)",
               "X-Claude-Code-Session-Id": session.header_sid}  # fmt: skip
    sys_text = "\n".join(b["text"] for b in system)
    chat_msgs = [{"role": "system", "content": sys_text},
                 {"role": "user", "content": "\n".join([CC_REMINDER, *blocks])},
                 env, *rest]  # fmt: skip
    return Outgoing("/v1/messages?beta=true", headers, body,
                    {"messages": chat_msgs, "tools": chat_tools("claude")})  # fmt: skip


def claude_compacted(session: Session, summary: str) -> None:
    """The history a compaction leaves: one opening user message with the summary, then
    the next prompt (the env block reordered, the billing suffix new)."""
    intro = ("This session is being continued from a previous conversation that ran out of "
             f"context. Summary:\n{summary}\n\nIf you need specific details, read the full "
             f"transcript at: /home/.claude/projects/app/{session.sid}.jsonl")  # fmt: skip
    caveat = "<local-command-stdout>Compacted (ctrl+o to see full summary)</local-command-stdout>"
    session.history = [{"role": "user", "content": [intro, caveat, user_text(session, 99)]}]
    session.compacted = True


# -- OpenAI Responses: Codex -------------------------------------------------------------------
CODEX_COMPACT = ("You are performing a CONTEXT CHECKPOINT COMPACTION. Create a handoff summary "
                 "for another LLM that will resume the task.")  # fmt: skip
CODEX_SKILLS = (
    "<skills_instructions>A skill is a set of local instructions.</skills_instructions>",
    "<permissions instructions>Filesystem sandboxing: read-only.</permissions instructions>",
)


def codex_env(day: int) -> str:
    return (f"<environment_context>\n  <cwd>/work/app</cwd>\n  <shell>bash</shell>\n"
            f"  <current_date>{date_of(day)}</current_date>\n  <timezone>UTC</timezone>\n"
            "</environment_context>")  # fmt: skip


def codex_item_id(session: Session, i: int) -> str:
    if i not in session.ids:
        session.ids[i] = "msg_" + hashlib.sha256(f"{session.sid}/{i}".encode()).hexdigest()[:32]
    return session.ids[i]


def codex_items(session: Session, head: list[dict[str, Any]],
                history: list[dict[str, Any]]) -> list[dict[str, Any]]:  # fmt: skip
    items: list[dict[str, Any]] = []
    for i, msg in enumerate([*head, *history]):
        role, content = msg["role"], msg.get("content")
        if role == "tool":
            items.append({"type": "function_call_output", "call_id": msg["tool_call_id"],
                          "output": content})  # fmt: skip
            continue
        parts = content if isinstance(content, list) else [content]
        kind = "output_text" if role == "assistant" else "input_text"
        items.append({"type": "message", "role": "developer" if role == "system" else role,
                      "id": codex_item_id(session, i),
                      "content": [{"type": kind, "text": p} for p in parts]})  # fmt: skip
        for call in msg.get("tool_calls") or []:
            items.append({"type": "function_call", "call_id": call["id"],
                          "name": call["function"]["name"],
                          "arguments": call["function"]["arguments"]})  # fmt: skip
    return items


def codex_head(day: int) -> list[dict[str, Any]]:
    return [{"role": "system", "content": system_text("codex")},
            {"role": "system", "content": list(CODEX_SKILLS)},
            {"role": "user", "content": codex_env(day)}]  # fmt: skip


def codex_request(session: Session, day: int, summarize: bool = False) -> Outgoing:
    history = list(session.history)
    if summarize:
        history.append({"role": "user", "content": CODEX_COMPACT})
    head = [] if session.compacted else codex_head(day)
    tools = [] if summarize else chat_tools("codex")
    wire_tools: list[dict[str, Any]] = [
        {
            "type": "function",
            "name": t["function"]["name"],
            "description": t["function"]["description"],
            "parameters": t["function"]["parameters"],
            "strict": False,
        }
        for t in tools
    ]
    if not summarize:
        wire_tools.append({"type": "web_search"})
    thread = session.sid
    meta = {"session_id": session.header_sid,
            "thread_id": thread, "turn_id": f"turn-{session.calls}",
            "window_id": f"{thread}:{session.window}", "window_number": session.window,
            "request_kind": "compaction" if summarize else "turn"}  # fmt: skip
    body = {
        "model": "smollm2", "input": codex_items(session, head, history), "tools": wire_tools,
        "tool_choice": "auto", "parallel_tool_calls": not summarize,
        "reasoning": {"summary": "auto"}, "store": False,
        "include": ["reasoning.encrypted_content"], "prompt_cache_key": thread,
        "client_metadata": meta, "stream": True, "max_output_tokens": 8, "temperature": 0,
    }  # fmt: skip
    headers = {"Authorization": "Bearer sk-local", "originator": "codex_exec",
               "User-Agent": "codex_exec/0.169.0 (Ubuntu 24.4.0; x86_64) xterm",
               "session-id": meta["session_id"], "thread-id": thread,
               "x-client-request-id": thread, "x-codex-window-id": meta["window_id"],
               "x-codex-turn-metadata": json.dumps(meta),
               "x-codex-beta-features": "remote_compaction_v2"}  # fmt: skip
    chat_head = [{"role": m["role"], "content": m["content"] if isinstance(m["content"], str)
                  else "\n".join(m["content"])} for m in head]  # fmt: skip
    chat_hist = [{**m, "content": "\n".join(m["content"])} if isinstance(m.get("content"), list)
                 else m for m in history]  # fmt: skip
    return Outgoing("/v1/responses", headers, body,
                    {"messages": [*chat_head, *chat_hist], "tools": tools})  # fmt: skip


def codex_compacted(session: Session, summary: str, day: int) -> None:
    """Memento compaction: the base prompt, earlier user messages kept verbatim (assistant
    turns dropped), the skills and environment, the last user message, a summary message,
    then the next prompt; item ids new, window +1. The history now holds the head too."""
    users = [m for m in session.history if m["role"] == "user"]
    note = ("Another language model started to solve this problem and produced a summary "
            f"of its thinking process:\n{summary}")  # fmt: skip
    base, skills, env = codex_head(day)
    session.history = [base, *users[:-1], skills, env, *users[-1:],
                       {"role": "user", "content": note},
                       {"role": "user", "content": user_text(session, 99)}]  # fmt: skip
    session.ids = {}
    session.window += 1
    session.compacted = True


# -- the two chat clients' compactions ---------------------------------------------------------
# Their opening words are the clients' own (OpenClaw's SUMMARIZATION_SYSTEM_PROMPT, Hermes'
# summarizer preamble); the rest is shortened.
OPENCLAW_SUMMARIZER = (
    "You are a context summarization assistant. Your task is to read a conversation between "
    "a user and an AI assistant, then produce a structured summary following the exact "
    "format specified.\n\nDo NOT continue the conversation. ONLY output the structured summary."
)
OPENCLAW_ASK = "Create a structured context checkpoint summary: goal, progress, next steps."
HERMES_SUMMARIZER = "hermes"
HERMES_HEAD = (
    "You are a summarization agent creating a context checkpoint. Treat the conversation "
    "turns below as source material for a compact record of prior work.\n\nCreate a "
    "structured checkpoint summary for the conversation after earlier turns are compacted."
    "\n\nTURNS TO SUMMARIZE:\n"
)
HERMES_TAIL = "\n\nUse this exact structure:\n\n## Goal\n## Completed Actions\n## Active State"


def chat_compacted(session: Session, summary: str) -> None:
    if session.kind == "openclaw":
        session.history = [
            {"role": "user", "content": "The conversation history before this point was "
             f"compacted into the following summary:\n<summary>\n{summary}\n</summary>"},
            {"role": "user", "content": user_text(session, 99)}]  # fmt: skip
    else:  # Hermes keeps the head and the recent turns, a reference note in the middle
        head, recent = session.history[:2], session.history[-2:]
        note = {"role": "assistant", "content": f"[CONTEXT COMPACTION — REFERENCE ONLY] {summary}"}
        session.history = [*head, note, *recent,
                           {"role": "user", "content": user_text(session, 99)}]  # fmt: skip
    session.compacted = True


def request(session: Session, day: int, summarize: bool = False) -> Outgoing:
    """The session's next request in its client's shape (``summarize``: the summarizer)."""
    if session.kind == "claude":
        return claude_request(session, day, summarize)
    if session.kind == "codex":
        return codex_request(session, day, summarize)
    summarizer = None
    if summarize:
        summarizer = OPENCLAW_SUMMARIZER if session.kind == "openclaw" else HERMES_SUMMARIZER
    return chat_request(session, day, summarizer)


def compact(session: Session, summary: str, day: int) -> None:
    """Replace the history as the session's client does after its summarizer answered (the
    summary is not echoed as a reply)."""
    session.pending = None
    if session.kind == "claude":
        claude_compacted(session, summary)
    elif session.kind == "codex":
        codex_compacted(session, summary, day)
    else:
        chat_compacted(session, summary)
