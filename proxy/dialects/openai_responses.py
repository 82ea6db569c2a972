"""OpenAI Responses ``POST /v1/responses`` (Codex, the OpenAI Agents SDK).

The request becomes the canonical chat conversation by the conversion llama-server applies
to this protocol (``server_chat_convert_responses_to_chatcmpl``), item by item, so the model
sees what it would see without kvproxy. ``previous_response_id`` (which llama-server
refuses) is served by kvproxy: the stored conversation is put in front of ``input`` before
the conversion (``expand``). The answer leaves as Responses' typed events
(``ResponsesResponder``).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.core.conversation import Conversation, Message, MessageMemo, frozen_map, thaw
from proxy.core.errors import BadRequest, ProxyError
from proxy.dialects.base import optional_bool, optional_str, require_object
from proxy.dialects.bridged import ChatBridged, chat_usage, one_text

# Read by the conversion (or by kvproxy); the rest are chat parameters, as llama-server
# keeps them.
CONVERTED = ("model", "input", "instructions", "tools", "max_output_tokens", "reasoning",
             "stream", "previous_response_id")  # fmt: skip
INPUT_ROLES = ("user", "system", "developer")


def input_part(part: Any) -> dict[str, Any]:
    kind = part.get("type", "") if isinstance(part, Mapping) else ""
    if kind == "input_text":
        if "text" not in part:
            raise BadRequest("'Input text' requires 'text'")
        return {"text": part["text"], "type": "text"}
    if kind == "input_image":
        if "image_url" not in part:
            raise BadRequest("'image_url' is required")
        return {"image_url": {"url": part["image_url"]}, "type": "image_url"}
    if kind == "input_file":
        raise BadRequest("'input_file' is not supported by llamacpp at this moment")
    raise BadRequest("'type' must be one of 'input_text', 'input_image', or 'input_file'")


def output_part(part: Any) -> dict[str, Any]:
    kind = part.get("type", "") if isinstance(part, Mapping) else ""
    if kind in ("output_text", "input_text"):
        if not isinstance(part.get("text"), str):
            raise BadRequest("'Output text' requires 'text'")
        return {"text": part["text"], "type": "text"}
    if kind == "refusal":
        if not isinstance(part.get("refusal"), str):
            raise BadRequest("'Refusal' requires 'refusal'")
        return {"refusal": part["refusal"], "type": "refusal"}
    raise BadRequest("'type' must be one of 'output_text' or 'refusal'")


def _rest(item: Mapping[str, Any], *drop: str) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k not in ("role", "content", *drop)}


class Items:
    """Responses input items folded into chat messages, as llama-server folds them:
    assistant items that follow an assistant message merge into it."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    def _merge(self) -> dict[str, Any] | None:
        last = self.messages[-1] if self.messages else None
        return last if last is not None and last.get("role") == "assistant" else None

    def add(self, item: dict[str, Any]) -> None:
        prev = self._merge()
        if isinstance(item.get("content"), str):
            item = {**item, "content": [{"text": item["content"], "type": "input_text"}]}
        role, kind = item.get("role"), item.get("type")
        if isinstance(item.get("content"), list) and role in INPUT_ROLES:
            content = [input_part(p) for p in item["content"]]
            self.messages.append({"role": role, "content": content,
                                  **_rest(item, "type", "status")})  # fmt: skip
        elif role == "assistant" and kind == "message":
            self._assistant(item, prev)
        elif kind == "function_call" and all(
            isinstance(item.get(k), str) for k in ("arguments", "call_id", "name")
        ):
            call = {"function": {"arguments": item["arguments"], "name": item["name"]},
                    "id": item["call_id"], "type": "function"}  # fmt: skip
            if prev is not None:  # a new list: the item's own is the client's (kept)
                calls = prev.get("tool_calls", [])
                if not isinstance(calls, list):
                    raise BadRequest("'tool_calls' of an assistant item must be an array")
                prev["tool_calls"] = [*calls, call]
            else:
                self.messages.append({"role": "assistant", "tool_calls": [call]})
        elif kind == "function_call_output" and isinstance(item.get("call_id"), str):
            self._output(item)
        elif kind == "reasoning" and isinstance(item.get("summary"), list):
            self._reasoning(item, prev)
        else:
            raise BadRequest("Cannot determine type of 'item'")

    def _assistant(self, item: dict[str, Any], prev: dict[str, Any] | None) -> None:
        content = item.get("content")
        parts = [output_part(p) for p in content] if isinstance(content, list) else []
        if prev is not None:
            if not isinstance(prev.get("content"), list):
                prev["content"] = []
            prev["content"] += parts
        else:
            self.messages.append({**_rest(item, "type", "status"), "role": "assistant",
                                  "content": parts})  # fmt: skip

    def _output(self, item: dict[str, Any]) -> None:
        output = item.get("output")
        if isinstance(output, list):
            parts = []
            for part in output:
                kind = part.get("type") if isinstance(part, Mapping) else None
                if kind == "input_text":
                    parts.append({**part, "type": "text"})
                elif kind == "input_image" and "image_url" in part:
                    parts.append({**part, "type": "image_url",
                                  "image_url": {"url": part["image_url"]}})  # fmt: skip
                else:
                    raise BadRequest("Output of tool call should be 'Input text' or "
                                     "'Input image'")  # fmt: skip
            output = parts
        elif not isinstance(output, str):
            raise BadRequest("Cannot determine type of 'item'")
        self.messages.append({"content": output, "role": "tool", "tool_call_id": item["call_id"]})

    def _reasoning(self, item: dict[str, Any], prev: dict[str, Any] | None) -> None:
        content = item.get("content")
        if not isinstance(content, list) or not content:
            raise BadRequest("item['content'] of a reasoning item must be a non-empty array")
        if not isinstance(content[0], Mapping) or not isinstance(content[0].get("text"), str):
            raise BadRequest("item['content']['text'] is not a string")
        if prev is not None:
            prev["reasoning_content"] = content[0]["text"]
        else:
            self.messages.append({"role": "assistant", "content": [],
                                  "reasoning_content": content[0]["text"]})  # fmt: skip


def convert_input(body: Mapping[str, Any]) -> list[Message]:
    items = Items()
    if "instructions" in body:
        instructions = body["instructions"]
        items.messages.append(
            {"role": "system", "content": instructions if isinstance(instructions, str) else ""}
        )
    value = body["input"]
    if isinstance(value, str):
        items.messages.append({"role": "user", "content": value})
    elif isinstance(value, list):
        for item in value:
            if not isinstance(item, dict):
                raise BadRequest("'input' must be a string or array of objects")
            items.add(dict(item))
    else:
        raise BadRequest("'input' must be a string or array of objects")
    return [
        Message(
            m["role"],
            one_text(m["content"]) if isinstance(m.get("content"), list) else m.get("content"),
            frozen_map(_rest(m)),
        )
        for m in items.messages
    ]


def convert_tools(tools: Any) -> tuple[Mapping[str, Any], ...] | None:
    """Function tools only: the others have no chat equivalent (llama-server skips them)."""
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise BadRequest("'tools' must be an array of objects")
    out = []
    for tool in tools:
        if not isinstance(tool, Mapping) or tool.get("type") != "function":
            continue
        function = {k: v for k, v in tool.items() if k != "type"}
        function.setdefault("strict", True)
        out.append(frozen_map({"type": "function", "function": function}))
    return tuple(out) or None


def chat_params(body: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in body.items() if k not in CONVERTED}
    if "max_output_tokens" in body:
        out["max_tokens"] = body["max_output_tokens"]
    reasoning = body.get("reasoning")
    if isinstance(reasoning, Mapping) and "effort" in reasoning:
        out["reasoning_effort"] = reasoning["effort"]
    return out


@dataclass(frozen=True)
class OpenAIResponses(ChatBridged):
    name: str = "openai_responses"
    family: str = "responses"
    framing: str = "sse"
    path: str = "/v1/responses"

    def parse(self, body: Any, memo: MessageMemo | None = None) -> Conversation:
        body = require_object(body)
        if "input" not in body:
            raise BadRequest("'input' is required")
        extra = {k: body[k] for k in ("store", "metadata", "previous_response_id") if k in body}
        return Conversation(
            kind="chat",
            model=optional_str(body, "model"),
            messages=tuple(convert_input(body)),
            tools=convert_tools(body.get("tools")),
            stream=optional_bool(body, "stream", False),
            params=frozen_map(chat_params(body)),
            extra=frozen_map(extra),
        )

    def error_event(self, err: ProxyError) -> dict[str, Any]:
        return {"type": "error", "code": err.code, "message": err.message, "param": None}

    def responder(self, conv: Conversation) -> ResponsesResponder:
        return ResponsesResponder(model=conv.model or "")


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


@dataclass
class ResponsesResponder:
    """Chat chunks in, Responses events out; ``response`` is the finished object (what
    kvproxy stores for ``previous_response_id``)."""

    model: str
    id: str = field(default_factory=lambda: new_id("resp"))
    created: int = field(default_factory=lambda: int(time.time()))
    seq: int = 0
    started: bool = False
    open: dict[str, Any] | None = None  # the output item being streamed
    calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    output: list[dict[str, Any]] = field(default_factory=list)
    usage: tuple[int, int, int] = (0, 0, 0)
    response: dict[str, Any] | None = None

    def _event(self, kind: str, **data: Any) -> dict[str, Any]:
        self.seq += 1
        return {"type": kind, "sequence_number": self.seq - 1, **data}

    def _shell(self, status: str) -> dict[str, Any]:
        return {"id": self.id, "object": "response", "created_at": self.created,
                "status": status, "model": self.model, "output": list(self.output)}  # fmt: skip

    def usage_body(self) -> dict[str, Any]:
        prompt, cached, generated = self.usage
        return {"input_tokens": prompt, "output_tokens": generated,
                "total_tokens": prompt + generated,
                "input_tokens_details": {"cached_tokens": cached},
                "output_tokens_details": {"reasoning_tokens": 0}}  # fmt: skip

    def on_chunk(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if (usage := chat_usage(chunk)) is not None:
            self.usage = usage
        if not self.started:
            self.started = True
            out.append(self._event("response.created", response=self._shell("in_progress")))
            out.append(self._event("response.in_progress", response=self._shell("in_progress")))
        for choice in chunk.get("choices") or []:
            out += self._choice(choice)
        return out

    def _choice(self, choice: Mapping[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        delta = choice.get("delta") or {}
        if delta.get("reasoning_content"):
            out += self._ensure("reasoning")
            assert self.open is not None
            self.open["content"][0]["text"] += delta["reasoning_content"]
            out.append(self._event("response.reasoning_text.delta", item_id=self.open["id"],
                                   output_index=len(self.output), content_index=0,
                                   delta=delta["reasoning_content"]))  # fmt: skip
        if delta.get("content"):
            out += self._ensure("message")
            assert self.open is not None
            self.open["content"][0]["text"] += delta["content"]
            out.append(self._event("response.output_text.delta", item_id=self.open["id"],
                                   output_index=len(self.output), content_index=0,
                                   delta=delta["content"], logprobs=[]))  # fmt: skip
        for call in delta.get("tool_calls") or []:
            out += self._tool_call(call)
        return out

    def _ensure(self, kind: str, call: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        if self.open is not None and self.open["type"] == kind and call is None:
            return []
        out = self._finish_item()
        if kind == "reasoning":
            self.open = {"id": new_id("rs"), "type": "reasoning", "summary": [],
                         "content": [{"type": "reasoning_text", "text": ""}]}  # fmt: skip
        elif kind == "message":
            self.open = {"id": new_id("msg"), "type": "message", "role": "assistant",
                         "status": "in_progress",
                         "content": [{"type": "output_text", "text": "", "annotations": [],
                                      "logprobs": []}]}  # fmt: skip
        else:
            assert call is not None
            fn = call.get("function") or {}
            call_id = str(call.get("id") or new_id("call"))
            self.open = {"id": f"fc_{call_id}", "type": "function_call",
                         "status": "in_progress", "arguments": "", "call_id": call_id,
                         "name": fn.get("name", "")}  # fmt: skip
        added = {k: v for k, v in self.open.items() if k != "content"}
        if kind == "message":
            added["content"] = []
        out.append(self._event("response.output_item.added", output_index=len(self.output),
                               item=added))  # fmt: skip
        if kind == "message":
            out.append(self._event("response.content_part.added", item_id=self.open["id"],
                                   output_index=len(self.output), content_index=0,
                                   part={"type": "output_text", "text": "",
                                         "annotations": []}))  # fmt: skip
        return out

    def _tool_call(self, call: Mapping[str, Any]) -> list[dict[str, Any]]:
        index = int(call.get("index", 0))
        out: list[dict[str, Any]] = []
        if index not in self.calls:
            out += self._ensure("function_call", call)
            assert self.open is not None
            self.calls[index] = self.open
        item = self.calls[index]
        arguments = (call.get("function") or {}).get("arguments")
        if arguments:
            item["arguments"] += arguments
            out.append(self._event("response.function_call_arguments.delta",
                                   item_id=item["id"], output_index=len(self.output),
                                   delta=arguments))  # fmt: skip
        return out

    def _finish_item(self) -> list[dict[str, Any]]:
        item, self.open = self.open, None
        if item is None:
            return []
        out, index = [], len(self.output)
        if item["type"] == "message":
            part = item["content"][0]
            out.append(self._event("response.output_text.done", item_id=item["id"],
                                   output_index=index, content_index=0, text=part["text"],
                                   logprobs=[]))  # fmt: skip
            out.append(self._event("response.content_part.done", item_id=item["id"],
                                   output_index=index, content_index=0, part=part))  # fmt: skip
        elif item["type"] == "function_call":
            out.append(self._event("response.function_call_arguments.done", item_id=item["id"],
                                   output_index=index, arguments=item["arguments"]))  # fmt: skip
        if "status" in item:
            item["status"] = "completed"
        self.output.append(item)
        out.append(self._event("response.output_item.done", output_index=index, item=item))
        return out

    def closing(self) -> list[dict[str, Any]]:
        out = [] if self.started else self.on_chunk({})
        out += self._finish_item()
        # "completed" even when cut at max_output_tokens, as llama-server's own endpoint says
        self.response = {**self._shell("completed"), "usage": self.usage_body()}
        return [*out, self._event("response.completed", response=self.response)]

    def whole(self, answer: dict[str, Any]) -> dict[str, Any]:
        """A non-streamed chat completion as one Responses object."""
        if (usage := chat_usage(answer)) is not None:
            self.usage = usage
        choice = (answer.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        delta = {
            "reasoning_content": message.get("reasoning_content"),
            "content": message.get("content"),
            "tool_calls": [
                {**c, "index": i} for i, c in enumerate(message.get("tool_calls") or [])
            ],
        }
        self.started = True
        self._choice({"delta": delta, "finish_reason": choice.get("finish_reason")})
        self.closing()
        assert self.response is not None
        return self.response


def expand(body: dict[str, Any], earlier: list[dict[str, Any]]) -> dict[str, Any]:
    """The body with a stored conversation (its input and output items) before ``input``."""
    current = body.get("input", [])
    if isinstance(current, str):
        current = [{"role": "user", "content": current}]
    rest = {k: v for k, v in body.items() if k != "previous_response_id"}
    return {**rest, "input": [*earlier, *thaw(current)]}


def as_items(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A body's ``input`` as a list of items (what a later ``previous_response_id`` resends)."""
    value = body.get("input", [])
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    return [dict(item) for item in value if isinstance(item, Mapping)]


def output_items(response: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A response's output as input items: reasoning items with no summary are kept as
    llama-server reads them back."""
    return json.loads(json.dumps(response.get("output") or []))


DIALECT = OpenAIResponses()
