"""Chat templates rendered here, trusted only for the request shapes verified against the
server at start.

llama-server renders templates with its own Jinja engine and rewrites messages first
(common/chat.cpp: tool-call arguments parsed into objects for templates that want them,
content parts joined for templates that only take strings, a system message merged where a
template has no system role, per-model handlers for gpt-oss, Mistral and others). Python's
Jinja cannot promise the same output for every template and every shape, so kvproxy asks
the server once at start: each probe conversation (one per request feature) is rendered
by ``/apply-template`` and here, with each of the message normalizations llama.cpp may
apply; a feature whose probe renders identically with some normalization is rendered here
from then on, with that normalization. A request using any feature that did not verify is
rendered by the server (one round trip), then tokenized here.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

PLAIN, TOOLS, TOOL_CALLS, PARTS, KWARGS = "plain", "tools", "tool_calls", "parts", "kwargs"
PREFILL = "prefill"  # the last message is the assistant's: the reply continues it

_TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "description": "City name"}}, "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "run", "description": "Run a shell command",
        "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}},
                       "required": ["cmd"]}}},
]  # fmt: skip
_SYSTEM = {"role": "system", "content": "You are terse. Tools may help."}
_CALLS = [
    {"id": "call_1", "type": "function",
     "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
    {"id": "call_2", "type": "function",
     "function": {"name": "run", "arguments": '{"cmd": "ls -la"}'}},
]  # fmt: skip
# One probe per feature; each later feature's probe includes what it needs of the others.
PROBES: dict[str, dict[str, Any]] = {
    PLAIN: {"messages": [
        _SYSTEM, {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "A joke about caches — ünïcödé ✓ 日本語"}]},
    TOOLS: {"tools": _TOOLS, "messages": [_SYSTEM, {"role": "user", "content": "Weather?"}]},
    TOOL_CALLS: {"tools": _TOOLS, "messages": [
        _SYSTEM, {"role": "user", "content": "Weather in Paris, and list files"},
        {"role": "assistant", "content": "", "tool_calls": _CALLS},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "a.txt\nb.txt"},
        {"role": "user", "content": "Thanks"}]},
    PARTS: {"messages": [
        _SYSTEM, {"role": "user", "content": [
            {"type": "text", "text": "First part."}, {"type": "text", "text": "Second part."}]}]},
    KWARGS: {"chat_template_kwargs": {"enable_thinking": False},
             "messages": [_SYSTEM, {"role": "user", "content": "Hi"}]},
    PREFILL: {"messages": [_SYSTEM, {"role": "user", "content": "Name a colour"},
                           {"role": "assistant", "content": "Sure, the colour is"}]},
}  # fmt: skip


def features(body: dict[str, Any]) -> frozenset[str]:
    """The request features a chat body uses (PLAIN always)."""
    out = {PLAIN}
    if body.get("tools"):
        out.add(TOOLS)
    if body.get("chat_template_kwargs"):
        out.add(KWARGS)
    for m in body.get("messages") or []:
        if len(m) == 2 and "role" in m and type(m.get("content")) is str and m["role"] != "tool":
            continue  # a role and its text (most messages): nothing to add
        if m.get("tool_calls") or m.get("role") == "tool":
            out.add(TOOL_CALLS)
        if not isinstance(m.get("content"), str | None):
            out.add(PARTS)
        if set(m) - {"role", "content", "name", "tool_calls", "tool_call_id"}:
            out.add("other")  # reasoning_content and the like: always the server's
    messages = body.get("messages") or []
    if messages and messages[-1].get("role") == "assistant":
        out.add(PREFILL)
        if not isinstance(messages[-1].get("content"), str | None) or messages[-1].get(
            "tool_calls"
        ):
            out.add("other")  # parts joined, or tool calls refused: the server's call
    for key in ("tool_choice", "parallel_tool_calls", "response_format", "json_schema"):
        if key in body:
            out.add("other")
    return frozenset(out)


@dataclass(frozen=True)
class Normalization:
    """How messages are rewritten before rendering, as llama.cpp may."""

    object_arguments: bool = False  # tool-call arguments parsed from their JSON string
    join_parts: bool = False  # text parts joined with a newline into one string
    null_content: bool = False  # content "" of a tool-call message left as it is
    merge_system: bool = False  # no system role: merged into the next message, or dropped

    def apply(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """New message dicts (the request's are never changed); only what a flag rewrites
        is copied deeper, so a long conversation costs a shallow copy per message."""
        out = [dict(m) for m in messages]
        if self.merge_system and out and out[0].get("role") == "system":
            first = out.pop(0)
            if out and isinstance(first.get("content"), str):
                out[0]["content"] = f"{first['content']}\n{out[0].get('content') or ''}"
        for m in out:
            content = m.get("content")
            if self.join_parts and isinstance(content, list):
                texts = [p.get("text", "") for p in content
                         if isinstance(p, dict) and p.get("type") == "text"]  # fmt: skip
                m["content"] = "\n".join(texts)
            if self.object_arguments and isinstance(m.get("tool_calls"), list):
                m["tool_calls"] = [object_arguments(call) for call in m["tool_calls"]]
            if m.get("tool_calls") and m.get("content") is None and not self.null_content:
                m["content"] = ""
        return out


def object_arguments(call: Any) -> Any:
    """A tool call whose JSON-string arguments are parsed, as a copy."""
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("arguments"), str):
        return call
    return {**call, "function": {**fn, "arguments": json.loads(fn["arguments"])}}


NORMALIZATIONS = [
    Normalization(object_arguments=o, join_parts=j, merge_system=s)
    for s in (False, True) for o in (False, True) for j in (False, True)
]  # fmt: skip


def render(template: str, body: dict[str, Any], special: dict[str, str],
           norm: Normalization, generation_prompt: bool = True,
           now: time.struct_time | None = None) -> str:  # fmt: skip
    """The template rendered with transformers' Jinja environment (its ``tojson``,
    ``raise_exception``, ``strftime_now``), given the context llama-server builds
    (common/chat.cpp): messages, ``bos_token``/``eos_token``, ``enable_thinking`` (true
    unless the request's ``chat_template_kwargs`` say otherwise), ``tools`` only when there
    are some, the date strings (of ``now``, the local time by default), then the request's
    own template kwargs."""
    from transformers.utils.chat_template_utils import _compile_jinja_template

    messages = norm.apply(list(body.get("messages") or []))
    if generation_prompt and messages and messages[-1].get("role") == "assistant":
        return prefill(template, body, special, messages, now)
    kwargs = body.get("chat_template_kwargs") or {}
    now = now or time.localtime()
    context: dict[str, Any] = {
        "messages": messages,
        **special,
        "enable_thinking": kwargs.get("enable_thinking", True) is not False,
        "datetime": time.strftime("%b %d %Y", now),
        "date_string": time.strftime("%d %b %Y", now),
        "add_generation_prompt": generation_prompt,
    }
    if body.get("tools"):
        context["tools"] = body["tools"]
    context.update({k: v for k, v in kwargs.items() if k != "enable_thinking"})
    return _compile_jinja_template(template).render(**context)


def prefill(template: str, body: dict[str, Any], special: dict[str, str],
            messages: list[dict[str, Any]], now: time.struct_time | None = None
            ) -> str:  # fmt: skip
    """A conversation ending with the assistant's message, which the reply continues
    (server-common.cpp, chat-auto-parser-generator.cpp): the messages before it rendered
    without a generation prompt, then the generation prompt the template would add (what
    rendering with one adds), then that message's content, unclosed."""
    rest = {**body, "messages": messages[:-1]}
    plain = Normalization(null_content=True)  # already normalized
    without = render(template, rest, special, plain, generation_prompt=False, now=now)
    with_prompt = render(template, rest, special, plain, generation_prompt=True, now=now)
    added = with_prompt[first_difference(without, with_prompt) :]
    return without + added + (messages[-1].get("content") or "")


USER_PROBE = "U_USER_MSG Hello END_U"
ASSISTANT_PROBE = "A_ASST_MSG I can help END_A"


def user_start_marker(template: str, special: dict[str, str]) -> str:
    """The text that starts a user message in this template, as llama.cpp's autoparser
    finds it (common/chat-diff-analyzer.cpp ``detect_user_start_marker``): what a user
    message adds to an empty conversation, up to its content, without leading end markers
    and whitespace. llama-server takes a context checkpoint where these tokens occur (on
    sliding-window and recurrent models); "" when the template does not show one."""
    user = {"role": "user", "content": USER_PROBE}
    # llama.cpp's two variants: no messages, then (for templates that need messages) an
    # exchange before the user message.
    exchange = [{"role": "user", "content": "V_USER_MSG Hello END_V"},
                {"role": "assistant", "content": ASSISTANT_PROBE}]  # fmt: skip
    for before in ([], exchange):
        try:
            base, one = (render(template, {"messages": messages}, special, Normalization(),
                                generation_prompt=False)
                         for messages in (before, [*before, user]))  # fmt: skip
        except Exception:  # this template cannot render the variant
            continue
        break
    else:
        return ""
    at = first_difference(base, one)
    for opening, closing in (("<", ">"), ("[", "]")):  # back to the start of a marker
        start = one.rfind(opening, 0, at)
        if start >= 0 and closing not in one[start:at]:
            at = start
    added = one[at:]
    if USER_PROBE not in added:
        return ""
    if ASSISTANT_PROBE in added:
        added = added[added.index(ASSISTANT_PROBE) + len(ASSISTANT_PROBE) :]
    candidate = added[: added.index(USER_PROBE)]
    while True:  # leading end markers ("<|im_end|>", "<end_of_turn>") and whitespace
        candidate = candidate.lstrip()
        match = re.match(r"<[^<>]*>|\[[^\[\]]*\]", candidate)
        if match is None or not re.search("end|close", match.group().lower()):
            break
        candidate = candidate[match.end() :]
    return candidate.strip()


@dataclass
class Verified:
    """Which features render here, and with which normalization."""

    features: dict[str, frozenset[Normalization]] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)  # feature: why not

    def normalization(self, wanted: frozenset[str]) -> Normalization | None:
        """A normalization that verified for every one of these features, else None."""
        common = set(NORMALIZATIONS)
        for feature in wanted:
            common &= self.features.get(feature, frozenset())
        return next((n for n in NORMALIZATIONS if n in common), None)


async def verify(
    template: str,
    special: dict[str, str],
    server_render: Callable[[dict[str, Any]], Awaitable[str]],
    drop_doubled_specials: Callable[[str], str],
) -> Verified:
    """Render every probe here and on the server; ``drop_doubled_specials`` strips BOS/EOS."""
    result = Verified()
    for feature, probe in PROBES.items():
        try:
            want = await server_render(probe)
        except Exception as exc:  # the server refuses the shape: so will kvproxy
            result.refused[feature] = f"the server cannot render it ({str(exc)[:80]})"
            continue
        tried, matched = [], set()
        for norm in NORMALIZATIONS:
            try:
                got = drop_doubled_specials(render(template, probe, special, norm))
            except Exception as exc:
                tried.append(f"{type(exc).__name__}")
                continue
            if got == want:
                matched.add(norm)
            else:
                tried.append(f"differs at character {first_difference(got, want)}")
        if matched:
            result.features[feature] = frozenset(matched)
        else:
            result.refused[feature] = "; ".join(sorted(set(tried)))[:200]
    return result


def first_difference(a: str, b: str) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)
