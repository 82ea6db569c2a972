"""An appended turn rendered from the previous turn's text: only a window of messages goes
through the template.

An agent resends its whole conversation every turn, and rendering a few hundred messages
with Jinja is most of kvproxy's own time on a long conversation. Per conversation (found
by its messages, under one request shape: template arguments, tools, normalization, date)
the text of the last request is kept; a request that extends it renders the first message,
the last few messages before the new ones (``WINDOW``) and the new ones, and its text is the
kept text followed by what the window adds. A window starts at an odd index so that the
templates that check role alternation by position see the same parity.

That equals the full render only for templates whose output for earlier messages does not
change when messages are appended, and whose output for the new messages depends on only
the first message and the window. So a request shape resumes only after ``certify`` has
compared the resumed text with the full render on synthetic conversations (chat turns,
tool loops far from the last user message, a user message after one, reasoning in content),
and every resumed turn checks that the window reproduces the kept text's last messages.
Whatever fails a check is rendered whole (docs/tokens.md).
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import orjson
import xxhash

from proxy.tokens.templates import Normalization, render

# Messages before the new ones rendered again with them (at least 4: two head the window,
# the rest are checked against the kept text).
WINDOW = 6
# Conversations shorter than this are rendered whole (little to save).
MIN_MESSAGES = 12
# Text kept in all (a 32k-token conversation is about 130 k characters, kept once).
MAX_CHARS = 8 << 20
MAX_ENTRIES = 64
MAX_SHAPES = 64

Message = dict[str, Any]
Renderer = Callable[[list[Message], bool], str]


@dataclass
class Entry:
    """A request's messages with their text, and what the generation prompt adds to it.

    The prompt is made when asked for, and an entry that a later turn extends keeps no text
    of its own: its text starts the later one's (``lean_on``). So a conversation's kept text
    is one copy, not two a turn: what each turn's render allocates is freed with the request
    and reused by the next, instead of new memory (page faults) every turn."""

    shape: Hashable
    messages: list[Message]
    own: str | None
    added: str
    length: int = -1
    later: Entry | None = None
    key: int = 0  # in ``ResumedRender._entries``

    def __post_init__(self) -> None:
        if self.length < 0 and self.own is not None:
            self.length = len(self.own)

    @property
    def text(self) -> str:
        """Without the generation prompt (a copy, for an entry a later one extends)."""
        own = self.own
        if own is not None:
            return own
        assert self.later is not None
        return self.later.text[: self.length]

    @property
    def prompt(self) -> str:
        return self.text + self.added

    @property
    def size(self) -> int:
        return len(self.own or "") + len(self.added)

    def lean_on(self, later: Entry) -> None:
        """Take the text from ``later``, which extends it (set before the own text goes:
        another thread may be reading it)."""
        self.later = later
        self.own = None


def window_start(n: int) -> int:
    """The first message of the window before message ``n``: odd, ``WINDOW`` or one more
    messages back."""
    s = n - WINDOW
    return s if s % 2 else s - 1


def resume(entry: Entry, messages: list[Message], r: Renderer) -> Entry | None:
    """``messages`` (which extend ``entry.messages``) rendered through the window; None when
    a check fails: the window must reproduce the kept text's last messages, and what it adds
    must extend what it had."""
    k, n = len(entry.messages), len(messages)
    s = window_start(k)
    if s < 1 or k <= s + 2 or n <= k:
        return None
    head = messages[:1]
    lead = r([*head, *messages[s : s + 2]], False)
    before = r([*head, *messages[s:k]], False)
    after = r([*head, *messages[s:n]], False)
    opened = r([*head, *messages[s:n]], True)
    tail = before[len(lead) :]
    if not (tail and before.startswith(lead) and after.startswith(before)
            and opened.startswith(after) and entry.text.endswith(tail)):  # fmt: skip
        return None
    text = entry.text + after[len(before) :]
    # the kept messages, not this request's equal copies: a turn's decoded messages are then
    # freed with the request, and the next turn's decode reuses their memory
    kept = [*entry.messages, *messages[k:]]
    return Entry(entry.shape, kept, text, opened[len(after) :])


def fresh(shape: Hashable, messages: list[Message], prompt: str, r: Renderer) -> Entry | None:
    """A fully rendered request kept for the next turn: its text without the generation
    prompt is ``prompt`` less what the window's generation prompt adds; None when the
    window does not show it."""
    n = len(messages)
    s = window_start(n)
    if s < 1 or n <= s + 2:
        return None
    head = messages[:1]
    lead = r([*head, *messages[s : s + 2]], False)
    closed = r([*head, *messages[s:n]], False)
    opened = r([*head, *messages[s:n]], True)
    tail = closed[len(lead) :]
    added = opened[len(closed) :]
    if not (tail and closed.startswith(lead) and opened.startswith(closed)
            and prompt.endswith(tail + added)):  # fmt: skip
        return None
    return Entry(shape, list(messages), prompt[: len(prompt) - len(added)], added)


def attempt(fn: Callable[..., Entry | None], *args: Any) -> Entry | None:
    """``fn``'s entry, or None when the template refuses a window (the full render then
    decides)."""
    try:
        return fn(*args)
    except Exception:
        return None


def shape_of(body: dict[str, Any], norm: Normalization, now: time.struct_time) -> Hashable:
    """What the render depends on besides the messages; None when it cannot be keyed."""
    try:
        extra = orjson.dumps([body.get("tools"), body.get("chat_template_kwargs")])
    except TypeError:
        return None
    return (norm, time.strftime("%Y-%m-%d", now), xxhash.xxh3_128_intdigest(extra))


class ResumedRender:
    """The chat template's text for a request, resumed from an earlier turn where that is
    certified (module doc); one per tokenizer, bounded by the text it keeps."""

    def __init__(self, template: str, special: dict[str, str], max_chars: int = MAX_CHARS,
                 max_entries: int = MAX_ENTRIES, drop: str | None = None) -> None:  # fmt: skip
        self.template = template
        self.special = special
        # What the text loses at its start for the tokenizer (the BOS a template writes where
        # the vocabulary adds its own): kept texts are without it, so a resumed turn's text
        # is made without a copy to drop it.
        self.drop = drop or None
        self.max_chars = max_chars
        self.max_entries = max_entries
        self._entries: OrderedDict[int, Entry] = OrderedDict()
        self._chars = 0
        self._next = 0
        self._certified: dict[Hashable, bool] = {}
        self._lock = threading.Lock()
        self.resumed = 0  # turns resumed (tests, bench)

    def renderer(self, body: dict[str, Any], norm: Normalization,
                 now: time.struct_time) -> Renderer:  # fmt: skip
        def r(messages: list[Message], generation_prompt: bool) -> str:
            return render(self.template, {**body, "messages": messages}, self.special, norm,
                          generation_prompt, now)  # fmt: skip

        return r

    def resumes(self, body: dict[str, Any], norm: Normalization) -> bool:
        """Whether ``render`` would resume ``body`` from a kept entry of a shape already
        certified (cheap: no rendering; the caller then renders on the event loop)."""
        messages = body.get("messages") or []
        if len(messages) < MIN_MESSAGES or messages[-1].get("role") == "assistant":
            return False
        shape = shape_of(body, norm, time.localtime())
        return (shape is not None and self._certified.get(shape) is True
                and self.find(shape, messages) is not None)  # fmt: skip

    def render(self, body: dict[str, Any], norm: Normalization) -> str:
        """The text ``templates.render`` gives for ``body`` (with the generation prompt),
        less ``drop`` at its start."""
        return self.render_parts(body, norm)[0]

    def render_parts(self, body: dict[str, Any], norm: Normalization) -> tuple[str, str | None]:
        """``render``'s text, and the text without the generation prompt where one is kept
        (the same object the next turn resumes from; the first text starts with it)."""
        now = time.localtime()
        messages = body.get("messages") or []
        r = self.renderer(body, norm, now)
        if len(messages) < MIN_MESSAGES or messages[-1].get("role") == "assistant":
            return self.dropped(r(messages, True)), None
        shape = shape_of(body, norm, now)
        if shape is None:
            return self.dropped(r(messages, True)), None
        entry = self.find(shape, messages)
        if entry is not None and self.certified(shape, r):
            if len(entry.messages) == len(messages):
                return entry.prompt, entry.text
            got = attempt(resume, entry, messages, r)
            if got is not None:
                self.resumed += 1
                self.keep(got, entry)
                return got.prompt, got.text
        prompt = self.dropped(r(messages, True))  # a template's refusal is the request's error
        got = attempt(fresh, shape, messages, prompt, r)
        if got is not None:
            self.keep(got)
            return prompt, got.text
        return prompt, None

    def dropped(self, text: str) -> str:
        """``text`` less ``drop`` at its start."""
        drop = self.drop
        return text[len(drop) :] if drop is not None and text.startswith(drop) else text

    def find(self, shape: Hashable, messages: list[Message]) -> Entry | None:
        """The longest kept entry whose messages start ``messages``."""
        n, best = len(messages), None
        with self._lock:
            for key, entry in reversed(self._entries.items()):
                k = len(entry.messages)
                if (entry.shape == shape and k <= n and (best is None or k > len(best[1].messages))
                        and messages[k - 1] == entry.messages[-1]
                        and messages[:k] == entry.messages):  # fmt: skip
                    best = (key, entry)
            if best is None:
                return None
            self._entries.move_to_end(best[0])
            return best[1]

    def keep(self, entry: Entry, extends: Entry | None = None) -> None:
        """Keep ``entry``; the entry it ``extends`` then takes its text from it."""
        if entry.size > self.max_chars // 2:
            return
        with self._lock:
            if extends is not None and extends.own is not None:
                held = self._entries.get(extends.key) is extends
                self._chars -= extends.size if held else 0
                extends.lean_on(entry)
                self._chars += extends.size if held else 0
            self._next += 1
            entry.key = self._next
            self._entries[self._next] = entry
            self._chars += entry.size
            while self._chars > self.max_chars or len(self._entries) > self.max_entries:
                _, old = self._entries.popitem(last=False)
                self._chars -= old.size

    def certified(self, shape: Hashable, r: Renderer) -> bool:
        """Whether this shape resumes (``certify``), decided once per shape."""
        known = self._certified.get(shape)
        if known is None:
            known = certify(r)
            if len(self._certified) >= MAX_SHAPES:
                self._certified.clear()
            self._certified[shape] = known
        return known

    def forget(self) -> None:
        with self._lock:
            self._entries.clear()
            self._chars = 0
            self._certified.clear()


def synthetic() -> list[list[Message]]:
    """Conversations whose turns a template may render differently once more are appended:
    chat turns (one with reasoning in its content), a tool loop far from its user message
    then a new user message, and a conversation with no system message."""

    def call(i: int) -> Message:
        arguments = json.dumps({"cmd": f"ls src/{i}"})
        return {"role": "assistant", "content": "", "tool_calls": [{
            "id": f"call_{i}", "type": "function",
            "function": {"name": "run", "arguments": arguments}}]}  # fmt: skip

    def result(i: int) -> Message:
        return {"role": "tool", "tool_call_id": f"call_{i}", "content": f"a{i}.txt\nb{i}.txt"}

    def user(i: int) -> Message:
        return {"role": "user", "content": f"Question {i}: why?"}

    def answer(i: int) -> Message:
        thought = "<think>\nLet me see.\n</think>\n\n" if i % 3 == 1 else ""
        return {"role": "assistant", "content": f"{thought}Because {i}."}

    system = {"role": "system", "content": "You are terse."}
    chat = [m for i in range(9) for m in (user(i), answer(i))]
    loop = [m for i in range(9) for m in (call(i), result(i))]
    tail = [m for i in range(10, 13) for m in (user(i), call(i), result(i), answer(i))]
    # each kind of message early, then none of it for longer than a window, then again
    calls = [user(20), call(20), result(20), *chat, user(21), call(21), result(21)]
    asks = [user(30), answer(30), user(31), *loop, answer(32), user(33)]
    return [[system, *chat, user(9)], [system, user(0), *loop, answer(9), *tail],
            [*chat, user(9), *loop], [system, *calls], [system, *asks]]  # fmt: skip


def certify(r: Renderer) -> bool:
    """Whether resuming gives the full render on every synthetic conversation, cut after
    each message a request may end with and extended by one to three messages; at least
    one case must resume. A conversation the template refuses is skipped (so would be a
    request), and so is a window it refuses (the request is then rendered whole)."""
    resumed = 0
    for conv in synthetic():
        for k in range(MIN_MESSAGES - 2, len(conv) - 1):
            if conv[k - 1]["role"] == "assistant":
                continue  # no request ends there
            try:
                start = fresh(None, conv[:k], r(conv[:k], True), r)
                closed = r(conv[:k], False)
            except Exception:
                continue
            if start is not None and start.text != closed:
                return False
            for more in (conv[: k + d] for d in (1, 2, 3) if k + d <= len(conv)):
                if start is None or more[-1]["role"] == "assistant":
                    continue
                try:
                    want = (r(more, True), r(more, False))
                    got = resume(start, more, r)
                except Exception:
                    continue
                if got is not None and (got.prompt, got.text) != want:
                    return False
                resumed += got is not None
    return resumed > 0
