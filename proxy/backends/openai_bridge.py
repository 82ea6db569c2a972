"""OpenAI chat requests answered by ollama's own ``/api/chat``: translated there and back.

Why: ollama's ``/v1`` endpoint runs every model at ollama's default context and takes no
``keep_alive``, so a client mixing ``/api/chat`` (with a ``num_ctx``) and ``/v1`` makes ollama
reload the model back and forth, and ``/v1`` alone lets it unload between agent turns.
Through ``/api/chat`` both get the model's one stable context and kvproxy's keep-alive
(proxy/ollama_keep.py). Sans-IO, like ``ollama_bridge`` (the other direction): the handler
feeds ollama's NDJSON objects in and writes the returned OpenAI objects out.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.core.conversation import Conversation, Message, thaw
from proxy.core.errors import BadRequest
from proxy.dialects.ollama_options import join_options

# OpenAI parameters with no ollama equivalent, not sent (ollama's /v1 ignores them too).
NOT_SENT = ("stream_options", "n", "user", "tool_choice", "parallel_tool_calls", "logprobs",
            "top_logprobs", "logit_bias", "service_tier", "store", "metadata")  # fmt: skip


def _images_and_text(content: Any) -> tuple[str, list[str]]:
    """OpenAI content (a string or parts) as ollama's text and base64 images."""
    if content is None or isinstance(content, str):
        return content or "", []
    texts, images = [], []
    for part in content:
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind == "image_url":
            url = str((part.get("image_url") or {}).get("url", ""))
            if not url.startswith("data:") or ";base64," not in url:
                raise BadRequest("images sent to ollama must be base64 data URLs")
            images.append(url.split(";base64,", 1)[1])
        else:
            raise BadRequest(f"content part type {kind!r} cannot be sent to ollama")
    return "\n".join(texts), images


def ollama_message(msg: Message, call_names: Mapping[str, str]) -> dict[str, Any]:
    """One OpenAI message as ollama's ``/api/chat`` takes it: parts become text and
    ``images``, tool-call arguments objects, a tool result names its tool (``tool_name``),
    ``reasoning_content`` becomes ``thinking``."""
    extra = thaw(msg.extra)
    text, images = _images_and_text(thaw(msg.content))
    out: dict[str, Any] = {"role": msg.role, "content": text}
    if images:
        out["images"] = images
    calls = []
    for call in extra.get("tool_calls") or []:
        fn = dict(call.get("function") or {})
        args = fn.get("arguments")
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except ValueError as exc:
                raise BadRequest("tool call arguments must be JSON for ollama") from exc
        calls.append({"function": {"name": fn.get("name", ""), "arguments": args}})
    if calls:
        out["tool_calls"] = calls
    if msg.role == "tool":
        name = extra.get("name") or call_names.get(str(extra.get("tool_call_id")))
        if name:
            out["tool_name"] = name
    if extra.get("reasoning_content"):
        out["thinking"] = extra["reasoning_content"]
    return out


def chat_request(conv: Conversation) -> dict[str, Any]:
    """The ``/api/chat`` body for an OpenAI chat conversation."""
    names = {
        str(call.get("id")): (call.get("function") or {}).get("name", "")
        for m in conv.messages for call in thaw(m.extra).get("tool_calls") or []
    }  # fmt: skip
    body: dict[str, Any] = {
        "model": conv.model,
        "messages": [ollama_message(m, names) for m in conv.messages],
        "stream": conv.stream,
    }
    if conv.tools:
        body["tools"] = thaw(conv.tools)
    params = {k: v for k, v in thaw(conv.params).items() if k not in NOT_SENT}
    if "max_completion_tokens" in params:
        params.setdefault("max_tokens", params.pop("max_completion_tokens"))
    body.update(join_options(params, {}))
    return body


def _openai_calls(calls: list[Any], first: int) -> list[dict[str, Any]]:
    out = []
    for i, call in enumerate(calls, start=first):
        fn = call.get("function") or {} if isinstance(call, Mapping) else {}
        args = fn.get("arguments", {})
        out.append({"index": i, "id": f"call_{uuid.uuid4().hex[:12]}", "type": "function",
                    "function": {"name": fn.get("name", ""),
                                 "arguments": args if isinstance(args, str)
                                 else json.dumps(args)}})  # fmt: skip
    return out


@dataclass
class OpenAIResponder:
    """ollama ``/api/chat`` output as OpenAI chat completion output."""

    model: str
    include_usage: bool = False
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex[:24]}")
    created: int = field(default_factory=lambda: int(time.time()))
    calls: int = 0
    started: bool = False
    usage: dict[str, int] = field(default_factory=dict)
    finish_reason: str = "stop"

    def _envelope(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def _absorb(self, obj: Mapping[str, Any]) -> None:
        if obj.get("done"):
            prompt, completion = int(obj.get("prompt_eval_count", 0)), int(obj.get("eval_count", 0))
            self.usage = {"prompt_tokens": prompt, "completion_tokens": completion,
                          "total_tokens": prompt + completion}  # fmt: skip
            if obj.get("done_reason") == "length":
                self.finish_reason = "length"

    def on_object(self, obj: Mapping[str, Any]) -> list[dict[str, Any]]:
        """SSE payloads (chunk objects) for one ollama NDJSON object."""
        self._absorb(obj)
        message = obj.get("message") or {}
        delta: dict[str, Any] = {}
        if not self.started:
            delta["role"] = "assistant"
        if message.get("content"):
            delta["content"] = message["content"]
        if message.get("thinking"):
            delta["reasoning_content"] = message["thinking"]
        if message.get("tool_calls"):
            delta["tool_calls"] = _openai_calls(message["tool_calls"], self.calls)
            self.calls += len(message["tool_calls"])
        out = []
        if set(delta) - {"role"}:
            self.started = True
            choice = {"index": 0, "delta": delta, "finish_reason": None}
            out.append({**self._envelope("chat.completion.chunk"), "choices": [choice]})
        if obj.get("done"):
            out += self.closing_frames()
        return out

    def closing_frames(self) -> list[dict[str, Any]]:
        reason = "tool_calls" if self.calls else self.finish_reason
        out = [{**self._envelope("chat.completion.chunk"),
                "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}]  # fmt: skip
        if self.include_usage:
            out.append({**self._envelope("chat.completion.chunk"), "choices": [],
                        "usage": self.usage})  # fmt: skip
        return out

    def whole(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """A non-streamed ollama answer as one ``chat.completion``."""
        self._absorb(obj)
        message = obj.get("message") or {}
        out_msg: dict[str, Any] = {"role": "assistant", "content": message.get("content", "")}
        if message.get("thinking"):
            out_msg["reasoning_content"] = message["thinking"]
        if message.get("tool_calls"):
            out_msg["tool_calls"] = [
                {k: v for k, v in c.items() if k != "index"}
                for c in _openai_calls(message["tool_calls"], 0)
            ]
            self.calls = len(out_msg["tool_calls"])
        reason = "tool_calls" if self.calls else self.finish_reason
        return {**self._envelope("chat.completion"),
                "choices": [{"index": 0, "message": out_msg, "finish_reason": reason}],
                "usage": self.usage}  # fmt: skip
