"""A compaction's summarizer call, recognised and matched against the conversation it copies.

OpenClaw and Hermes summarize a conversation in a separate request that re-sends its turns
as one block of text (a *transcript*) under another prompt: a full prefill of everything a
slot already holds. Each client writes its transcript with its own serializer; ``SHAPES``
holds a copy of each (quoted in docs/rules.md), so that a transcript can be compared, entry
by entry and character for character, with what a tape sent. Pure: no I/O, no tape store.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from proxy.core.conversation import Conversation, Message
from proxy.rewrite.identity import Identity
from proxy.rewrite.tape import Tape, text_hash

OPENCLAW_SYSTEM = "You are a context summarization assistant."
OPENCLAW_OPEN, OPENCLAW_CLOSE = "<conversation>\n", "\n</conversation>\n\n"
OPENCLAW_CONTEXT = "<<<BEGIN_OPENCLAW_INTERNAL_CONTEXT>>>"
OPENCLAW_TOOL_RESULT_MAX = 2000  # TOOL_RESULT_MAX_CHARS of its compaction module
HERMES_PREAMBLE = "You are a summarization agent creating a context checkpoint."
HERMES_HEADS = ("\n\nTURNS TO SUMMARIZE:\n", "\n\nNEW TURNS TO INCORPORATE:\n")
HERMES_TAILS = ("\n\nMEMORY PROVIDER CONTEXT:\n", "\n\nUse this exact structure:",
                "\n\nUpdate the summary using this exact structure.")  # fmt: skip
HERMES_MAX, HERMES_HEAD, HERMES_TAIL = 6000, 4000, 1500  # _CONTENT_MAX/_HEAD/_TAIL
HERMES_ARGS_MAX, HERMES_ARGS_HEAD = 1500, 1200  # _TOOL_ARGS_MAX/_HEAD


@dataclass(frozen=True)
class Split:
    """A summarizer request cut around its transcript: ``text[start:]`` begins with it, and
    it ends where one of ``tails`` begins. ``system`` is the summarizer's system text."""

    system: str | None
    text: str
    start: int
    tails: tuple[str, ...]


@dataclass(frozen=True)
class Shape:
    name: str
    split: Callable[[Conversation], Split | None]
    entries: Callable[[Message], list[str] | None]  # None: this client never writes it so
    reply_label: str  # how an assistant text reply opens its entry
    instruction: Callable[[Split, int, str], str]  # (split, end of transcript, reference)


def plain_text(message: Message) -> str | None:
    """The text parts joined by newlines (both clients' joiner); None with any other part."""
    content = message.content
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for part in content:
        if not (isinstance(part, Mapping) and part.get("type") == "text"):
            return None
        texts.append(part.get("text") or "")
    return "\n".join(texts)


def tool_calls(message: Message) -> list[tuple[str, str]] | None:
    """(name, arguments as sent) of each tool call; None when one is malformed."""
    calls = message.extra.get("tool_calls") or ()
    found = []
    for call in calls:
        function = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            return None
        args = function.get("arguments", "")
        found.append((function["name"], args if isinstance(args, str) else json.dumps(args)))
    return found


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def utf16_prefix(text: str, units: int) -> str:
    """The longest prefix of at most ``units`` UTF-16 code units (no half surrogate pair)."""
    count = 0
    for i, char in enumerate(text):
        count += 2 if ord(char) > 0xFFFF else 1
        if count > units:
            return text[:i]
    return text


def js_json(value: Any) -> str:
    """``JSON.stringify`` for the values Python writes alike (not floats: those differ)."""
    if isinstance(value, float):
        raise ValueError("a float may print differently in JavaScript")
    if isinstance(value, Mapping):
        items = (f"{json.dumps(k, ensure_ascii=False)}:{js_json(v)}" for k, v in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(js_json(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


# -- OpenClaw (serializeConversation of its compaction module) ----------------------------------


def openclaw_split(conv: Conversation) -> Split | None:
    if len(conv.messages) != 2 or [m.role for m in conv.messages] != ["system", "user"]:
        return None
    system, user = conv.messages[0].content, plain_text(conv.messages[1])
    if not (isinstance(system, str) and system.startswith(OPENCLAW_SYSTEM) and user):
        return None
    if not user.startswith(OPENCLAW_OPEN):
        return None
    return Split(system, user, len(OPENCLAW_OPEN), (OPENCLAW_CLOSE,))


def openclaw_tool_result(text: str) -> str:
    """``truncateForSummary`` when no error tail is kept apart (anything else: no match)."""
    if utf16_len(text) <= OPENCLAW_TOOL_RESULT_MAX:
        return text
    head = utf16_prefix(text, OPENCLAW_TOOL_RESULT_MAX)
    return f"{head}\n\n[... {utf16_len(text) - utf16_len(head)} more characters truncated]"


def openclaw_entries(message: Message) -> list[str] | None:
    text = plain_text(message)
    if text is None:
        return None
    if message.role == "user":
        return [] if not text or text.startswith(OPENCLAW_CONTEXT) else [f"[User]: {text}"]
    if message.role == "tool":
        body = openclaw_tool_result(text)
        return [f"[Tool result]: {body}"] if body else []
    if message.role != "assistant":
        return None
    calls = tool_calls(message)
    if calls is None:
        return None
    entries = [f"[Assistant]: {text}"] if text else []
    if calls:
        try:
            shown = [f"{name}({openclaw_args(args)})" for name, args in calls]
        except (ValueError, AttributeError):
            return None
        entries.append(f"[Assistant tool calls]: {'; '.join(shown)}")
    return entries


def openclaw_args(args: str) -> str:
    """``k=JSON.stringify(v)`` per argument, as its compaction module lists a tool call."""
    return ", ".join(f"{k}={js_json(v)}" for k, v in json.loads(args).items())


def openclaw_instruction(split: Split, end: int, reference: str) -> str:
    rest = split.text[end + len(OPENCLAW_CLOSE) :]
    return f"{split.system}\n\n{OPENCLAW_OPEN}{reference}{OPENCLAW_CLOSE}{rest}"


# -- Hermes (ContextCompressor._serialize_for_summary) ------------------------------------------


def hermes_split(conv: Conversation) -> Split | None:
    if len(conv.messages) != 1 or conv.messages[0].role != "user":
        return None
    text = plain_text(conv.messages[0])
    if not text or not text.startswith(HERMES_PREAMBLE):
        return None
    for head in HERMES_HEADS:
        at = text.find(head)
        if at >= 0:
            return Split(None, text, at + len(head), HERMES_TAILS)
    return None


def hermes_cut(text: str) -> str:
    if len(text) <= HERMES_MAX:
        return text
    return text[:HERMES_HEAD] + "\n...[truncated]...\n" + text[-HERMES_TAIL:]


def hermes_entries(message: Message) -> list[str] | None:
    text = plain_text(message)
    if text is None:
        return None
    if message.role == "tool":
        call = message.extra.get("tool_call_id", "")
        return [f"[TOOL RESULT {call}]: {hermes_cut(text)}"]
    if message.role != "assistant":
        return [f"[{message.role.upper()}]: {hermes_cut(text)}"]
    calls = tool_calls(message)
    if calls is None:
        return None
    text = hermes_cut(text)
    if calls:
        shown = [f"  {name}({hermes_args(args)})" for name, args in calls]
        text += "\n[Tool calls:\n" + "\n".join(shown) + "\n]"
    return [f"[ASSISTANT]: {text}"]


def hermes_args(args: str) -> str:
    return args[:HERMES_ARGS_HEAD] + "..." if len(args) > HERMES_ARGS_MAX else args


def hermes_instruction(split: Split, end: int, reference: str) -> str:
    return split.text[: split.start] + reference + split.text[end:]


# The clients whose summarizer calls are recognised, tried in order.
SHAPES: tuple[Shape, ...] = (
    Shape("openclaw", openclaw_split, openclaw_entries, "[Assistant]: ", openclaw_instruction),
    Shape("hermes", hermes_split, hermes_entries, "[ASSISTANT]: ", hermes_instruction),
)


@dataclass(frozen=True)
class Match:
    """A transcript that is exactly a tape's messages ``start:end`` (and, with ``reply``, the
    reply relayed for that tape's last request), in the shape's own serialization."""

    shape: Shape
    split: Split
    tape: Tape
    start: int
    end: int
    reply: str | None
    transcript_end: int  # where the transcript ends in ``split.text``

    @property
    def reference(self) -> str:
        """What stands in the instruction where the transcript stood."""
        before = sum(1 for m in self.tape.sent[: self.start] if m.role != "system")
        if before == 0:
            return "[the conversation above]"
        return f"[the conversation above, from its message {before + 1} on]"

    def messages(self) -> tuple[Message, ...]:
        """Upstream: the conversation as the tape sent it, then one user message with the
        summarizer's system text and instruction."""
        head = list(self.tape.sent[: self.end])
        if self.reply is not None:
            head.append(Message.make("assistant", self.reply))
        text = self.shape.instruction(self.split, self.transcript_end, self.reference)
        return (*head, Message.make("user", text))


def serialize(shape: Shape, messages: Sequence[Message]) -> str | None:
    """The transcript the client writes for these messages; None where it writes none."""
    out: list[str] = []
    for message in messages:
        entries = shape.entries(message)
        if entries is None:
            return None
        out.extend(entries)
    return "\n\n".join(out)


def ends_at(split: Split, at: int) -> bool:
    return any(split.text.startswith(tail, at) for tail in split.tails)


def reply_end(shape: Shape, split: Split, tape: Tape, at: int) -> tuple[int, str] | None:
    """Where a transcript ends that goes on, from ``at``, with the tape's relayed reply."""
    text = split.text
    opening = ("\n\n" if at > split.start else "") + shape.reply_label
    if not tape.reply or not text.startswith(opening, at):
        return None
    begin = at + len(opening)
    for tail in split.tails:
        end = text.find(tail, begin)
        while end >= 0:
            reply = text[begin:end]
            if reply.strip() and text_hash(reply) == tape.reply:
                return end, reply
            end = text.find(tail, end + 1)
    return None


def match_tape(shape: Shape, split: Split, tape: Tape) -> Match | None:
    """The one reading of the transcript as this tape's messages ``start:end`` (+ reply):
    None when there is none, or several that end in different places."""
    sent = tape.sent
    found: list[Match] = []
    for start in range(1 if sent and sent[0].role == "system" else 0, len(sent)):
        at, first = split.start, True
        for end in range(start, len(sent)):
            entries = shape.entries(sent[end])
            if entries is None:
                break
            if entries:
                piece = ("" if first else "\n\n") + "\n\n".join(entries)
                if not split.text.startswith(piece, at):
                    break
                at, first = at + len(piece), False
                if ends_at(split, at):
                    found.append(Match(shape, split, tape, start, end + 1, None, at))
            if end == len(sent) - 1 and not first:
                tail = reply_end(shape, split, tape, at)
                if tail is not None:
                    found.append(Match(shape, split, tape, start, end + 1, tail[1], tail[0]))
    if len({(m.end, m.reply) for m in found}) != 1:
        return None
    return min(found, key=lambda m: m.start)


def find(conv: Conversation, tapes: Sequence[Tape], identity: Identity) -> Match | str | None:
    """The tape of ``identity`` this summarizer request copies: a ``Match``; None when it is
    no summarizer request (the common case: decided before any tape is looked at); a reason
    (str) when it is one that no single conversation of this client explains."""
    for shape in SHAPES:
        split = shape.split(conv)
        if split is None:
            continue
        own = [t for t in tapes if t.belongs_to(identity)]
        matches = [m for t in own if (m := match_tape(shape, split, t)) is not None]
        if not matches:
            return "no conversation of this client holds the transcript"
        if any(m.messages() != matches[0].messages() for m in matches):
            return "the transcript fits more than one conversation"
        return matches[-1]
    return None
