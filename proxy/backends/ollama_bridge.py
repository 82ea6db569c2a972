"""ollama's API answered by llama-server: requests, streams and model listings translated.

Sans-IO: the handler feeds llama-server's OpenAI-compatible events in and writes out the
NDJSON lines returned. Durations are in nanoseconds, as ollama reports them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from proxy.core.conversation import Conversation, Message, thaw

# The ollama API level kvproxy emulates in front of llama-server (/api/version).
OLLAMA_API_VERSION = "0.12.0"


def now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _openai_tool_call(call: Mapping[str, Any], index: int) -> dict[str, Any]:
    fn = dict(call.get("function") or {})
    args = fn.get("arguments", {})
    if not isinstance(args, str):
        fn["arguments"] = json.dumps(args)
    return {"id": call.get("id") or f"call_{index}", "type": "function", "function": fn}


def openai_message(msg: Message) -> dict[str, Any]:
    """An ollama message as OpenAI/llama-server expects it: images become image parts,
    tool-call arguments become JSON strings, ``thinking`` becomes ``reasoning_content``."""
    extra = thaw(msg.extra)
    out: dict[str, Any] = {"role": msg.role}
    images = extra.pop("images", None) or []
    content = thaw(msg.content)
    if images:
        parts = [{"type": "text", "text": msg.text()}] if msg.text() else []
        parts += [
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{img}"}}
            for img in images
        ]
        content = parts
    out["content"] = content if content is not None else ""
    if "tool_calls" in extra:
        out["tool_calls"] = [_openai_tool_call(c, i) for i, c in enumerate(extra["tool_calls"])]
    if "thinking" in extra:
        out["reasoning_content"] = extra["thinking"]
    if "tool_name" in extra:
        out["name"] = extra["tool_name"]
    return out


def upstream_request(conv: Conversation, endpoint: str) -> tuple[str, dict[str, Any]]:
    """(llama-server path, body) for an ollama chat or generate request."""
    body: dict[str, Any] = {}
    if conv.model is not None:
        body["model"] = conv.model
    if endpoint == "generate" and conv.extra.get("raw"):
        body["prompt"] = conv.prompt
        path = "/v1/completions"
    else:
        if endpoint == "generate":
            messages = []
            if conv.extra.get("system"):
                messages.append({"role": "system", "content": conv.extra["system"]})
            user = Message.make("user", conv.prompt, images=conv.extra.get("images") or [])
            messages.append(openai_message(user))
        else:
            messages = [openai_message(m) for m in conv.messages]
        body["messages"] = messages
        if conv.tools:
            body["tools"] = thaw(conv.tools)
        path = "/v1/chat/completions"
    body["stream"] = conv.stream
    if conv.stream:
        body["stream_options"] = {"include_usage": True}
    body.update(thaw(conv.params))
    return path, body


def _ollama_tool_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for call in calls:
        fn = call.get("function") or {}
        args = fn.get("arguments") or "{}"
        try:
            parsed = json.loads(args) if isinstance(args, str) else args
        except ValueError:
            parsed = {"_raw": args}
        out.append({"function": {"name": fn.get("name", ""), "arguments": parsed}})
    return out


@dataclass
class OllamaResponder:
    """Turns llama-server OpenAI-compatible output into ollama chat/generate output."""

    endpoint: str
    model: str
    started_ns: int = field(default_factory=time.perf_counter_ns)
    done_reason: str = "stop"
    timings: dict[str, Any] = field(default_factory=dict)
    usage: dict[str, Any] = field(default_factory=dict)
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)

    def _chunk(self, text: str = "", thinking: str = "", **extra: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "created_at": now_iso()}
        if self.endpoint == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if thinking:
                message["thinking"] = thinking
            if "tool_calls" in extra:
                message["tool_calls"] = extra.pop("tool_calls")
            out["message"] = message
        else:
            out["response"] = text
            if thinking:
                out["thinking"] = thinking
        out.update(extra)
        return out

    def _absorb(self, event: Mapping[str, Any]) -> None:
        if isinstance(event.get("timings"), dict):
            self.timings = event["timings"]
        if isinstance(event.get("usage"), dict):
            self.usage = event["usage"]

    def _reason(self, finish: str | None) -> None:
        if finish:
            self.done_reason = "length" if finish == "length" else "stop"

    def on_event(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        """NDJSON objects for one streamed event (zero or one content chunk)."""
        self._absorb(event)
        out = []
        for choice in event.get("choices") or []:
            delta = choice.get("delta") or {}
            text = delta.get("content") or choice.get("text") or ""
            thinking = delta.get("reasoning_content") or ""
            for call in delta.get("tool_calls") or []:
                slot = self.tool_calls.setdefault(
                    call.get("index", 0), {"function": {"name": "", "arguments": ""}}
                )
                fn = call.get("function") or {}
                slot["function"]["name"] += fn.get("name") or ""
                slot["function"]["arguments"] += fn.get("arguments") or ""
            if text or thinking:
                out.append(self._chunk(text, thinking, done=False))
            self._reason(choice.get("finish_reason"))
        return out

    def closing_frames(self) -> list[dict[str, Any]]:
        """The closing objects: pending tool calls, then the ``done`` chunk with counters."""
        out = []
        if self.tool_calls:
            calls = [self.tool_calls[i] for i in sorted(self.tool_calls)]
            out.append(self._chunk(tool_calls=_ollama_tool_calls(calls), done=False))
        out.append(self._chunk(done=True, done_reason=self.done_reason, **self.counters()))
        return out

    def counters(self) -> dict[str, int]:
        t, u = self.timings, self.usage
        prompt = u.get("prompt_tokens", t.get("prompt_n", 0) + t.get("cache_n", 0))
        return {
            "total_duration": time.perf_counter_ns() - self.started_ns,
            "load_duration": 0,
            "prompt_eval_count": int(prompt),
            "prompt_eval_duration": int(t.get("prompt_ms", 0) * 1e6),
            "eval_count": int(u.get("completion_tokens", t.get("predicted_n", 0))),
            "eval_duration": int(t.get("predicted_ms", 0) * 1e6),
        }

    def whole(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """A non-streamed llama-server answer as one ollama response object."""
        self._absorb(body)
        choice = (body.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        text = message.get("content") or choice.get("text") or ""
        self._reason(choice.get("finish_reason"))
        extra: dict[str, Any] = {}
        if message.get("tool_calls"):
            extra["tool_calls"] = _ollama_tool_calls(message["tool_calls"])
        out = self._chunk(text, message.get("reasoning_content") or "", **extra)
        out.update(done=True, done_reason=self.done_reason, **self.counters())
        return out


def _model_name(models: Mapping[str, Any], props: Mapping[str, Any]) -> str:
    data = models.get("data") or [{}]
    return data[0].get("id") or props.get("model_alias") or "llama-server"


def _details(props: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "gguf",
        "family": props.get("model_family", ""),
        "families": None,
        "parameter_size": "",
        "quantization_level": "",
    }


def tags(models: Mapping[str, Any], props: Mapping[str, Any]) -> dict[str, Any]:
    """``GET /api/tags`` from llama-server's ``/v1/models`` and ``/props``."""
    meta = ((models.get("data") or [{}])[0]).get("meta") or {}
    name = _model_name(models, props)
    return {
        "models": [
            {
                "name": name,
                "model": name,
                "modified_at": now_iso(),
                "size": int(meta.get("size", 0)),
                "digest": "",
                "details": _details(props),
            }
        ]
    }


def show(models: Mapping[str, Any], props: Mapping[str, Any]) -> dict[str, Any]:
    """``POST /api/show``: the template, context sizes and parameter count llama-server has."""
    meta = ((models.get("data") or [{}])[0]).get("meta") or {}
    n_ctx = (props.get("default_generation_settings") or {}).get("n_ctx", 0)
    caps = ["completion"]
    if (props.get("chat_template_caps") or {}).get("supports_tools"):
        caps.append("tools")
    return {
        "license": "",
        "modelfile": f"FROM {props.get('model_path', '')}\n",
        "parameters": f"num_ctx {n_ctx}",
        "template": props.get("chat_template", ""),
        "details": _details(props),
        "model_info": {
            "general.parameter_count": meta.get("n_params", 0),
            "general.context_length": meta.get("n_ctx_train", 0),
            "llama.context_length": meta.get("n_ctx_train", 0),
        },
        "capabilities": caps,
        "modified_at": now_iso(),
    }


def version() -> dict[str, Any]:
    return {"version": OLLAMA_API_VERSION}
