"""Anthropic Messages ``POST /v1/messages`` (Claude Code, and any Anthropic SDK client).

The request becomes the canonical chat conversation by the very conversion llama-server
applies to this protocol (``server_chat_convert_anthropic_to_oai`` in its
tools/server/server-chat.cpp), so the model sees what it would see without kvproxy; kvproxy
then sends it to the server's chat endpoint, where ``id_slot`` and ``cache_prompt`` take
effect (its ``/v1/messages`` builds a fresh body and drops both). The answer comes back as
chat chunks and leaves as Anthropic's typed events (``MessagesResponder``).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.core.conversation import Conversation, Message, MessageMemo, frozen_map
from proxy.core.errors import BadRequest, ProxyError
from proxy.dialects.base import optional_bool, optional_str, require_object
from proxy.dialects.bridged import ChatBridged, chat_usage, one_text

# Fields the conversion reads; every other field is kept in ``extra`` (never sent upstream:
# llama-server drops them too) so that the session and the record can see them.
CONVERTED = ("model", "system", "messages", "tools", "tool_choice", "stop_sequences",
             "max_tokens", "temperature", "top_p", "top_k", "stream", "chat_template_kwargs",
             "thinking", "metadata")  # fmt: skip
PASSED = ("temperature", "top_p", "top_k", "chat_template_kwargs")
DEFAULT_MAX_TOKENS = 4096  # llama-server's default when the client sends none
# Claude Code's first system block carries a per-request checksum (``cch=ab12f;``):
# llama-server writes ``fffff`` over it so that the prefix cache gets past it; so does kvproxy.
BILLING = "x-anthropic-billing-header:"
CCH = re.compile(r"cch=(.{5});")
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
               403: "permission_error", 404: "not_found_error", 413: "request_too_large",
               429: "rate_limit_error", 503: "overloaded_error"}  # fmt: skip


def normalize_billing_header(text: str) -> str:
    """llama-server's ``normalize_anthropic_billing_header``: only the first ``cch=``."""
    if not text.startswith(BILLING):
        return text
    at = text.find("cch=", len(BILLING))
    if at < 0 or at + 9 >= len(text) or text[at + 9] != ";":
        return text
    return text[: at + 4] + "fffff" + text[at + 9 :]


def system_message(system: Any) -> Message | None:
    if system is None:
        return None
    if isinstance(system, str):
        return Message("system", normalize_billing_header(system))
    if not isinstance(system, list):
        raise BadRequest("'system' must be a string or an array of blocks")
    text = "".join(
        normalize_billing_header(str(block.get("text", "")))
        for block in system
        if isinstance(block, Mapping) and block.get("type") == "text"
    )
    return Message("system", text)


def image_part(source: Any) -> dict[str, Any] | None:
    if not isinstance(source, Mapping):
        return None
    if source.get("type") == "base64":
        media = source.get("media_type", "image/jpeg")
        return {"type": "image_url",
                "image_url": {"url": f"data:{media};base64,{source.get('data', '')}"}}  # fmt: skip
    if source.get("type") == "url":
        return {"type": "image_url", "image_url": {"url": source.get("url", "")}}
    return None


def tool_result(block: Mapping[str, Any]) -> Message:
    """A ``tool_result`` block as a chat tool message: text only collapses to a string."""
    call_id = str(block.get("tool_use_id", ""))
    content = block.get("content")
    extra = frozen_map({"tool_call_id": call_id})
    if isinstance(content, str):
        return Message("tool", content, extra)
    if not isinstance(content, list):
        return Message("tool", "", extra)
    parts: list[dict[str, Any]] = []
    for item in content:
        if not isinstance(item, Mapping):
            continue
        if item.get("type") == "text":
            parts.append({"type": "text", "text": str(item.get("text", ""))})
        elif item.get("type") == "image" and (image := image_part(item.get("source"))):
            parts.append(image)
    if all(p["type"] == "text" for p in parts):
        return Message("tool", "".join(p["text"] for p in parts), extra)
    return Message("tool", parts, extra)


@dataclass
class Blocks:
    """What one Anthropic message's blocks turn into, in llama-server's order."""

    content: list[dict[str, Any]] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)
    results: list[Message] = field(default_factory=list)
    reasoning: str = ""

    def add(self, block: Mapping[str, Any]) -> None:
        kind = block.get("type")
        if kind == "text":
            # a cache marker is no text: llama-server ignores it, and clients move it
            self.content.append({k: v for k, v in block.items() if k != "cache_control"})
        elif kind == "thinking":
            self.reasoning += str(block.get("thinking", ""))
        elif kind == "image" and (image := image_part(block.get("source"))):
            self.content.append(image)
        elif kind == "tool_use":
            arguments = json.dumps(block.get("input", {}), separators=(",", ":"),
                                   ensure_ascii=False)  # fmt: skip
            self.calls.append({"id": str(block.get("id", "")), "type": "function",
                               "function": {"name": str(block.get("name", "")),
                                            "arguments": arguments}})  # fmt: skip
        elif kind == "tool_result":
            self.results.append(tool_result(block))

    def messages(self, role: str) -> list[Message]:
        out = []
        if self.content or self.calls or self.reasoning:
            extra: dict[str, Any] = {}
            if self.calls:
                extra["tool_calls"] = self.calls
            if self.reasoning:
                extra["reasoning_content"] = self.reasoning
            content: Any = one_text(self.content) if self.content else ""
            out.append(Message(role, content, frozen_map(extra)))
        return out + self.results


def convert_message(item: Any, where: str) -> list[Message]:
    if not isinstance(item, dict):
        raise BadRequest(f"{where} must be an object")
    role = item.get("role")
    if not isinstance(role, str):
        raise BadRequest(f"{where}.role must be a string")
    extra = {k: v for k, v in item.items() if k not in ("role", "content")}
    if "content" not in item:
        return [] if role == "assistant" else [Message(role, None, frozen_map(extra))]
    content = item["content"]
    if not isinstance(content, list):
        if content is not None and not isinstance(content, str):
            raise BadRequest(f"{where}.content must be a string or an array of blocks")
        return [Message(role, content, frozen_map(extra))]
    blocks = Blocks()
    for j, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise BadRequest(f"{where}.content[{j}] must be an object with a string 'type'")
        blocks.add(block)
    return blocks.messages(role)


def convert_tools(tools: Any) -> tuple[Mapping[str, Any], ...] | None:
    if tools is None:
        return None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise BadRequest("'tools' must be an array of objects")
    return tuple(frozen_map({"type": "function", "function": {
        "name": str(t.get("name", "")), "description": str(t.get("description", "")),
        "parameters": t.get("input_schema", {})}}) for t in tools)  # fmt: skip


def chat_params(body: Mapping[str, Any]) -> dict[str, Any]:
    """The chat parameters llama-server derives from the Anthropic ones."""
    out: dict[str, Any] = {}
    choice = body.get("tool_choice")
    if isinstance(choice, Mapping):
        if choice.get("type") == "auto":
            out["tool_choice"] = "auto"
        elif choice.get("type") in ("any", "tool"):
            out["tool_choice"] = "required"
    if "stop_sequences" in body:
        out["stop"] = body["stop_sequences"]
    out["max_tokens"] = body.get("max_tokens", DEFAULT_MAX_TOKENS)
    out.update({k: body[k] for k in PASSED if k in body})
    thinking = body.get("thinking")
    if isinstance(thinking, Mapping) and thinking.get("type") == "enabled":
        out["thinking_budget_tokens"] = thinking.get("budget_tokens", 10000)
    metadata = body.get("metadata")
    user_id = metadata.get("user_id") if isinstance(metadata, Mapping) else None
    if isinstance(user_id, str) and user_id:
        out["__metadata_user_id"] = user_id
    return out


@dataclass(frozen=True)
class AnthropicMessages(ChatBridged):
    name: str = "anthropic_messages"
    family: str = "anthropic"
    framing: str = "sse"
    path: str = "/v1/messages"

    def parse(self, body: Any, memo: MessageMemo | None = None) -> Conversation:
        body = require_object(body)
        if "messages" not in body:
            raise BadRequest("'messages' is required")
        raw = body["messages"]
        if not isinstance(raw, list):
            raise BadRequest("'messages' must be an array")
        messages: list[Message] = []
        if (system := system_message(body.get("system"))) is not None:
            messages.append(system)
        for i, item in enumerate(raw):
            messages.extend(convert_message(item, f"messages[{i}]"))
        extra = {k: v for k, v in body.items() if k not in CONVERTED or k == "metadata"}
        return Conversation(
            kind="chat",
            model=optional_str(body, "model"),
            messages=tuple(messages),
            tools=convert_tools(body.get("tools")),
            stream=optional_bool(body, "stream", False),
            params=frozen_map(chat_params(body)),
            extra=frozen_map(extra),
        )

    def error_body(self, err: ProxyError) -> dict[str, Any]:
        kind = ERROR_TYPES.get(err.status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": err.message}}

    def responder(self, conv: Conversation) -> MessagesResponder:
        return MessagesResponder(model=conv.model or "")


STOP_REASONS = {"stop": "end_turn", "tool_calls": "tool_use", "length": "max_tokens"}


@dataclass
class MessagesResponder:
    """Chat chunks in, Anthropic events out; blocks are opened and closed in order."""

    model: str
    id: str = field(default_factory=lambda: f"msg_{uuid.uuid4().hex[:24]}")
    started: bool = False
    block: int = -1  # the open block's index
    open_kind: str | None = None
    tool_blocks: dict[int, int] = field(default_factory=dict)
    stop_reason: str = "end_turn"
    usage: tuple[int, int, int] = (0, 0, 0)

    def usage_body(self) -> dict[str, int]:
        prompt, cached, generated = self.usage
        return {"input_tokens": prompt - cached, "cache_read_input_tokens": cached,
                "cache_creation_input_tokens": 0, "output_tokens": generated}  # fmt: skip

    def _open(self, kind: str, block: dict[str, Any]) -> list[dict[str, Any]]:
        out = self._close()
        self.block += 1
        self.open_kind = kind
        out.append({"type": "content_block_start", "index": self.block, "content_block": block})
        return out

    def _close(self) -> list[dict[str, Any]]:
        if self.open_kind is None:
            return []
        out = []
        if self.open_kind == "thinking":
            out.append({"type": "content_block_delta", "index": self.block,
                        "delta": {"type": "signature_delta", "signature": ""}})  # fmt: skip
        self.open_kind = None
        return [*out, {"type": "content_block_stop", "index": self.block}]

    def _delta(self, delta: dict[str, Any]) -> dict[str, Any]:
        return {"type": "content_block_delta", "index": self.block, "delta": delta}

    def on_chunk(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if (usage := chat_usage(chunk)) is not None:
            self.usage = usage
        if not self.started:
            self.started = True
            out.append({"type": "message_start", "message": {
                "id": self.id, "type": "message", "role": "assistant", "content": [],
                "model": self.model, "stop_reason": None, "stop_sequence": None,
                "usage": self.usage_body()}})  # fmt: skip
        for choice in chunk.get("choices") or []:
            out += self._choice(choice)
        return out

    def _choice(self, choice: Mapping[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        delta = choice.get("delta") or {}
        if delta.get("reasoning_content"):
            if self.open_kind != "thinking":
                out += self._open("thinking", {"type": "thinking", "thinking": ""})
            out.append(self._delta({"type": "thinking_delta",
                                    "thinking": delta["reasoning_content"]}))  # fmt: skip
        if delta.get("content"):
            if self.open_kind != "text":
                out += self._open("text", {"type": "text", "text": ""})
            out.append(self._delta({"type": "text_delta", "text": delta["content"]}))
        for call in delta.get("tool_calls") or []:
            out += self._tool_call(call)
        if choice.get("finish_reason"):
            self.stop_reason = STOP_REASONS.get(choice["finish_reason"], "end_turn")
        return out

    def _tool_call(self, call: Mapping[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        index = int(call.get("index", 0))
        fn = call.get("function") or {}
        if index not in self.tool_blocks:
            out += self._open("tool_use", {"type": "tool_use", "id": call.get("id", ""),
                                           "name": fn.get("name", ""), "input": {}})  # fmt: skip
            self.tool_blocks[index] = self.block
        if fn.get("arguments"):
            out.append({"type": "content_block_delta", "index": self.tool_blocks[index],
                        "delta": {"type": "input_json_delta",
                                  "partial_json": fn["arguments"]}})  # fmt: skip
        return out

    def closing(self) -> list[dict[str, Any]]:
        out = [] if self.started else self.on_chunk({})
        out += self._close()
        out.append({"type": "message_delta", "usage": self.usage_body(),
                    "delta": {"stop_reason": self.stop_reason, "stop_sequence": None}})  # fmt: skip
        return [*out, {"type": "message_stop"}]

    def whole(self, answer: dict[str, Any]) -> dict[str, Any]:
        """A non-streamed chat completion as one Anthropic message."""
        if (usage := chat_usage(answer)) is not None:
            self.usage = usage
        choice = (answer.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        blocks: list[dict[str, Any]] = []
        if message.get("reasoning_content"):
            blocks.append({"type": "thinking", "thinking": message["reasoning_content"],
                           "signature": ""})  # fmt: skip
        if message.get("content"):
            blocks.append({"type": "text", "text": message["content"]})
        for call in message.get("tool_calls") or []:
            fn = call.get("function") or {}
            try:
                arguments = json.loads(fn.get("arguments") or "{}")
            except ValueError:
                arguments = {}
            blocks.append({"type": "tool_use", "id": call.get("id", ""),
                           "name": fn.get("name", ""), "input": arguments})  # fmt: skip
        reason = STOP_REASONS.get(choice.get("finish_reason") or "stop", "end_turn")
        return {"id": self.id, "type": "message", "role": "assistant", "content": blocks,
                "model": self.model, "stop_reason": reason, "stop_sequence": None,
                "usage": self.usage_body()}  # fmt: skip


DIALECT = AnthropicMessages()
