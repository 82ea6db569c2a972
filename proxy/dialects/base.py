"""What every dialect module provides, and the shared checks they parse with."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from proxy.core.conversation import (
    Conversation,
    Message,
    MessageMemo,
    frozen_map,
    thaw,
)
from proxy.core.errors import BadRequest, ProxyError

Framing = Literal["sse", "ndjson"]
Family = Literal["openai", "ollama", "llamacpp", "anthropic", "responses"]


class Dialect(Protocol):
    """Translates one API's request bodies to the canonical type and back."""

    name: str
    family: Family
    framing: Framing
    path: str

    def parse(self, body: Any, memo: MessageMemo | None = None) -> Conversation: ...

    def render(self, conv: Conversation) -> dict[str, Any]: ...

    def error_body(self, err: ProxyError) -> dict[str, Any]: ...


@dataclass(frozen=True)
class DialectBase:
    """Shared error framing; subclasses set name, family, framing, path and do the parsing."""

    name: str = ""
    family: Family = "openai"
    framing: Framing = "sse"
    path: str = ""

    def error_body(self, err: ProxyError) -> dict[str, Any]:
        return {"error": {"message": err.message, "type": err.code, "code": err.status}}

    def stream_error(self, err: ProxyError) -> bytes:
        """An error written into a stream whose headers already went out."""
        payload = json.dumps(self.error_body(err)).encode()
        if self.framing == "sse":
            return b"data: " + payload + b"\n\n"
        return payload + b"\n"


def require_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def optional_str(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"'{key}' must be a string")
    return value


def optional_bool(body: Mapping[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadRequest(f"'{key}' must be a boolean")
    return value


def parse_tools(body: Mapping[str, Any]) -> tuple[Mapping[str, Any], ...] | None:
    tools = body.get("tools")
    if tools is None:
        return None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise BadRequest("'tools' must be an array of objects")
    return tuple(frozen_map(t) for t in tools)


def parse_messages(body: Mapping[str, Any], memo: MessageMemo | None = None
                   ) -> tuple[Message, ...]:  # fmt: skip
    """The checked, canonical messages; one parsed before (``memo``) is taken as it was."""
    if "messages" not in body:
        raise BadRequest("'messages' is required")
    raw = body["messages"]
    if not isinstance(raw, list):
        raise BadRequest("'messages' must be an array")
    if memo is not None:
        return memo.messages(raw, parse_message)
    return tuple(parse_message(i, item) for i, item in enumerate(raw))


def parse_message(i: int, item: Any) -> Message:
    """``messages[i]``, checked."""
    if not isinstance(item, dict):
        raise BadRequest(f"messages[{i}] must be an object")
    role = item.get("role")
    if not isinstance(role, str):
        raise BadRequest(f"messages[{i}].role must be a string")
    content = item.get("content")
    if content is not None and not isinstance(content, str | list):
        raise BadRequest(f"messages[{i}].content must be a string or an array")
    if isinstance(content, list):
        check_parts(content, f"messages[{i}].content")
    check_message_fields(item, f"messages[{i}]")
    extra = {k: v for k, v in item.items() if k not in ("role", "content")}
    return Message(role=role, content=content, extra=frozen_map(extra))


def check_parts(parts: list[Any], where: str) -> None:
    """Content parts are objects with a string ``type``; a text part's text is a string."""
    for j, part in enumerate(parts):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise BadRequest(f"{where}[{j}] must be an object with a string 'type'")
        if part["type"] == "text" and not isinstance(part.get("text"), str):
            raise BadRequest(f"{where}[{j}].text must be a string")


def check_message_fields(item: Mapping[str, Any], where: str) -> None:
    """The fields rules and translations read: tool calls, their functions, images."""
    calls = item.get("tool_calls")
    if calls is not None:
        if not isinstance(calls, list):
            raise BadRequest(f"{where}.tool_calls must be an array")
        for j, call in enumerate(calls):
            if not isinstance(call, dict):
                raise BadRequest(f"{where}.tool_calls[{j}] must be an object")
            fn = call.get("function")
            if fn is not None and not isinstance(fn, dict):
                raise BadRequest(f"{where}.tool_calls[{j}].function must be an object")
            if isinstance(fn, dict) and not isinstance(fn.get("name", ""), str):
                raise BadRequest(f"{where}.tool_calls[{j}].function.name must be a string")
            if call.get("id") is not None and not isinstance(call.get("id"), str):
                raise BadRequest(f"{where}.tool_calls[{j}].id must be a string")
    check_images(item.get("images"), f"{where}.images")
    for key in ("tool_call_id", "name"):
        if item.get(key) is not None and not isinstance(item[key], str):
            raise BadRequest(f"{where}.{key} must be a string")


def check_images(images: Any, where: str) -> None:
    """ollama images: base64 strings."""
    if images is not None and not (
        isinstance(images, list) and all(isinstance(x, str) for x in images)
    ):
        raise BadRequest(f"{where} must be an array of strings")


MAX_TOKEN_ID = 2**31 - 1


def check_prompt_item(item: Any, where: str, depth: int = 0) -> None:
    """A prompt piece: a string, a token id (a non-negative 32-bit integer), or (one level)
    an array of those."""
    if isinstance(item, bool):
        raise BadRequest(f"{where} must be a string, a token id or an array of them")
    if isinstance(item, int):
        if not 0 <= item <= MAX_TOKEN_ID:
            raise BadRequest(f"{where}: token id {item} is outside any vocabulary")
        return
    if isinstance(item, str):
        return
    if isinstance(item, list) and depth < 2:
        for j, sub in enumerate(item):
            check_prompt_item(sub, f"{where}[{j}]", depth + 1)
        return
    raise BadRequest(f"{where} must be a string, a token id or an array of them")


def render_message(msg: Message) -> dict[str, Any]:
    """The message as OpenAI-shaped JSON, made once per message object (a message parsed
    again from an identical object is the same object, so a long conversation's earlier
    messages are not thawed again each turn). The result is only ever serialized."""
    known = msg.derived.get("rendered")
    if known is None:
        content = msg.content if type(msg.content) is str else thaw(msg.content)
        known = {"role": msg.role, "content": content}
        if msg.extra:
            known.update(thaw(msg.extra))
        msg.derived["rendered"] = known
    return known


def require_prompt(body: Mapping[str, Any]) -> Any:
    if "prompt" not in body:
        raise BadRequest("'prompt' is required")
    prompt = body["prompt"]
    if not isinstance(prompt, str | list):
        raise BadRequest("'prompt' must be a string or an array")
    check_prompt_item(prompt, "'prompt'")
    return prompt


def unknown_fields(body: Mapping[str, Any], structural: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in structural}


def render_envelope(conv: Conversation, **fields: Any) -> dict[str, Any]:
    """``model``, the dialect's own content fields, ``tools`` and ``stream``: the part of a
    body every dialect shares. The caller appends its parameters."""
    out: dict[str, Any] = {} if conv.model is None else {"model": conv.model}
    out.update(fields)
    if conv.tools is not None:
        out["tools"] = thaw(conv.tools)
    out["stream"] = conv.stream
    return out
