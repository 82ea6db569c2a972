"""The rewrite contract, checked in one place after planning and before sending.

The messages sent upstream must contain every piece of the client's request (each
message's text lines, its structural pieces: role, tool calls, tool-call ids, non-text
parts, other fields; the tools), and beside that only pieces of the tape of the same
conversation (what the client sent in its earlier requests, as kvproxy sent it) and
kvproxy's own delimiter lines. The client's pieces are compared as multisets (each
at least as often as the client sent it); the tape's pieces are allowed by presence (a
rule may repeat an earlier line of the same conversation, as a removed-lines block
does). A plan that fails is not sent: the client's request goes as it came, and the
record says why.

The opt-in summarizer rule has its own check (``check_summary``), exact rather than by
lines: the conversation exactly as its tape sent it, then one user message that is the
client's request with its transcript replaced by a reference; and the transcript must be
what the client's own serializer writes for exactly those messages.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from proxy.core.conversation import Conversation, Message, thaw
from proxy.rewrite import summarizer
from proxy.rewrite.identity import Identity
from proxy.rewrite.tape import Tape, text_hash
from proxy.rewrite.tools import canonical
from proxy.rewrite.volatile import DELIMITERS


def content_lines(message: Message) -> list[str]:
    """Non-blank text lines, per text part (a part boundary is a line boundary)."""
    content = message.content
    texts: list[str] = []
    if isinstance(content, str):
        texts = [content]
    elif isinstance(content, list | tuple):
        texts = [
            p["text"]
            for p in content
            if isinstance(p, Mapping) and p.get("type") == "text" and isinstance(p.get("text"), str)
        ]
    return [line for text in texts for line in text.splitlines() if line.strip()]


def dumps(value: Any) -> str:
    return json.dumps(thaw(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def structure(message: Message) -> str:
    """Everything of a message but its text: role, other fields, non-text parts."""
    content = message.content
    parts = []
    if isinstance(content, list | tuple):
        parts = [p for p in content if not (isinstance(p, Mapping) and p.get("type") == "text")]
    kind = "parts" if isinstance(content, list | tuple) else "text"
    return dumps({"role": message.role, "extra": message.extra, "parts": parts, "kind": kind})


def lines_of(messages: Iterable[Message]) -> Counter[str]:
    return Counter(line for m in messages for line in content_lines(m))


def structures_of(messages: Iterable[Message]) -> Counter[str]:
    return Counter(structure(m) for m in messages)


def missing(need: Counter[str], have: Counter[str]) -> list[str]:
    return [k for k, n in need.items() if have[k] < n]


def changed_request(planned: Conversation, client: Conversation) -> str | None:
    if (planned.kind, planned.model, planned.stream) != (client.kind, client.model, client.stream):
        return "changed the request's kind, model or stream flag"
    if dict(planned.params) != dict(client.params) or dict(planned.extra) != dict(client.extra):
        return "changed a request parameter"
    return None


def check_summary(
    planned: Conversation, client: Conversation, match: summarizer.Match, identity: Identity
) -> str | None:
    """The summarizer rule's plan, checked from scratch: None when it keeps the contract."""
    tape, shape = match.tape, match.shape
    if identity.session is None or not tape.belongs_to(identity):
        return "summarized a conversation of another client or session"
    changed = changed_request(planned, client)
    if changed is not None or planned.tools != client.tools:
        return changed or "changed the tools"
    if shape.split(client) != match.split:
        return "not a summarizer request of its client's shape"
    body, n = planned.messages, match.end
    replied = 0 if match.reply is None else 1
    if len(body) != n + replied + 1 or tuple(body[:n]) != tuple(tape.sent[:n]):
        return "the conversation is not as its tape sent it"
    if replied and (body[n] != summarizer.Message.make("assistant", match.reply)
                    or text_hash(match.reply or "") != tape.reply):  # fmt: skip
        return "the reply is not the one relayed for the conversation"
    end = match.transcript_end
    written = summarizer.serialize(shape, body[match.start : n + replied])
    if written != match.split.text[match.split.start : end] or not summarizer.ends_at(
        match.split, end
    ):
        return "the transcript is not the conversation's messages"
    instruction = shape.instruction(match.split, end, match.reference)
    if body[-1] != summarizer.Message.make("user", instruction):
        return "the instruction is not the client's"
    return None


def check(
    planned: Conversation,
    client: Conversation,
    tape: Tape | None,
    identity: Identity,
) -> str | None:
    """None when the plan keeps the contract, else the first reason it does not."""
    if tape is not None and not tape.belongs_to(identity):
        return "continued a tape of another client or session"
    changed = changed_request(planned, client)
    if changed is not None:
        return changed
    if planned.messages == client.messages and planned.tools == client.tools:
        return None  # sent as the client sent it (the common case): nothing to compare
    client_tools = Counter(map(canonical, client.tools or ()))
    if Counter(map(canonical, planned.tools or ())) != client_tools:
        return "changed the set of tools"
    if (planned.tools is None) != (client.tools is None):
        return "added or removed the tools field"
    earlier: Sequence[Message] = tape.sent if tape is not None else ()
    sent_lines, client_lines = lines_of(planned.messages), lines_of(client.messages)
    lost = missing(client_lines, sent_lines)
    if lost:
        return f"a line of the client's request is missing ({len(lost)} distinct)"
    earlier_lines = lines_of(earlier)
    foreign = [k for k in missing(sent_lines, client_lines)
               if k not in DELIMITERS and k not in earlier_lines]  # fmt: skip
    if foreign:
        return f"a line neither the client nor its conversation sent ({len(foreign)} distinct)"
    sent_struct, client_struct = structures_of(planned.messages), structures_of(client.messages)
    if missing(client_struct, sent_struct):
        return "a message, tool call or content part of the client's request is missing"
    earlier_struct = structures_of(earlier)
    if [k for k in missing(sent_struct, client_struct) if k not in earlier_struct]:
        return "a message, tool call or content part neither the client nor its conversation sent"
    last_role = client.messages[-1].role if client.messages else None
    if planned.messages and planned.messages[-1].role != last_role:
        return "the request no longer ends with the client's last message"
    return None
