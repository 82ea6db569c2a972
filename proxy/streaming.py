"""Incremental SSE and NDJSON framing: split a byte stream into events as chunks arrive.

The relay forwards each upstream chunk untouched; these splitters only observe a copy so
that the record can read the server's own counters (``timings``, ``usage``) from the end
of the stream, and so that the ollama bridge can translate event by event.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any


class SSESplitter:
    """Yields the ``data:`` payload of each complete server-sent event."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        self._buf += chunk.replace(b"\r\n", b"\n")
        while True:
            end = self._buf.find(b"\n\n")
            if end < 0:
                return
            event, self._buf = self._buf[:end], self._buf[end + 2 :]
            data = [line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:")]
            if data:
                yield b"\n".join(data)


class NDJSONSplitter:
    """Yields each complete line."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        self._buf += chunk
        while True:
            end = self._buf.find(b"\n")
            if end < 0:
                return
            line, self._buf = self._buf[:end].strip(), self._buf[end + 1 :]
            if line:
                yield line


def decode_event(payload: bytes) -> dict[str, Any] | None:
    """A JSON object from one event, or None for ``[DONE]`` and anything unparseable."""
    if payload == b"[DONE]":
        return None
    try:
        value = json.loads(payload)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def generated_text(event: Mapping[str, Any]) -> tuple[str, str | None]:
    """(text, finish reason) an event adds, in any of the upstream shapes: OpenAI chat
    (delta or message), OpenAI completions, llama-server /completion, ollama."""
    choices = event.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        choice = choices[0]
        part = choice.get("delta") or choice.get("message") or {}
        text = part.get("content") if isinstance(part, dict) else None
        if text is None:
            text = choice.get("text")
        return (text if isinstance(text, str) else ""), choice.get("finish_reason")
    if "content" in event and isinstance(event["content"], str):
        reason = event.get("stop_type") if event.get("stop") else None
        return event["content"], {"eos": "stop", "limit": "length"}.get(reason, reason)
    message = event.get("message")
    if isinstance(message, dict) and isinstance(message.get("content"), str):
        return message["content"], event.get("done_reason")
    if isinstance(event.get("response"), str):
        return event["response"], event.get("done_reason")
    return "", None


class UsageObserver:
    """Keeps the server-reported counters seen in a response, streamed or not, and the text
    generated (what the slot holds after the prompt, for the prefix index)."""

    def __init__(self, framing: str = "sse") -> None:
        self._splitter: SSESplitter | NDJSONSplitter = SSESplitter()
        self.framing(framing)
        self.timings: dict[str, Any] = {}
        self.usage: dict[str, Any] = {}
        self.ollama: dict[str, Any] = {}
        self._text: list[str] = []
        self.finish_reason: str | None = None

    def framing(self, framing: str) -> None:
        self._splitter = SSESplitter() if framing == "sse" else NDJSONSplitter()

    @property
    def text(self) -> str:
        return "".join(self._text)

    def feed(self, chunk: bytes) -> None:
        for payload in self._splitter.feed(chunk):
            self.observe(decode_event(payload))

    def observe(self, event: dict[str, Any] | None) -> None:
        if not event:
            return
        text, reason = generated_text(event)
        if text:
            self._text.append(text)
        if reason:
            self.finish_reason = reason
        if isinstance(event.get("timings"), dict):
            self.timings = event["timings"]
        if isinstance(event.get("usage"), dict):
            self.usage = event["usage"]
        if "prompt_eval_count" in event:
            self.ollama = {
                k: event[k]
                for k in (
                    "prompt_eval_count",
                    "prompt_eval_duration",
                    "eval_count",
                    "eval_duration",
                )
                if k in event
            }

    def observe_body(self, body: bytes) -> None:
        """A whole non-streamed body (JSON object) or a stream body read in one go."""
        event = decode_event(body.strip())
        if event is not None:
            self.observe(event)
        else:
            self.feed(body)
            self.feed(b"\n\n")

    def counters(self) -> dict[str, Any]:
        if self.timings or self.usage:
            return server_counters(self.timings, self.usage)
        if self.ollama:
            return {
                "prompt_tokens": self.ollama.get("prompt_eval_count"),
                "decode_tokens": self.ollama.get("eval_count"),
            }
        return {}


def server_counters(timings: Mapping[str, Any], usage: Mapping[str, Any]) -> dict[str, Any]:
    """Prompt, cached and prefilled tokens as llama-server reported them.

    ``timings`` (llama-server's own: ``prompt_n`` prefilled, ``cache_n`` reused) wins over
    OpenAI ``usage``, which other servers send without the split.
    """
    out: dict[str, Any] = {}
    if "prompt_n" in timings:
        out["prefilled_tokens"] = timings["prompt_n"]
        out["cached_tokens"] = timings.get("cache_n", 0)
        out["prompt_tokens"] = timings["prompt_n"] + timings.get("cache_n", 0)
        out["prefill_ms"] = timings.get("prompt_ms")
        out["decode_tokens"] = timings.get("predicted_n")
        out["decode_ms"] = timings.get("predicted_ms")
    elif "prompt_tokens" in usage:
        out["prompt_tokens"] = usage["prompt_tokens"]
        details = usage.get("prompt_tokens_details") or {}
        if "cached_tokens" in details:
            out["cached_tokens"] = details["cached_tokens"]
        out["decode_tokens"] = usage.get("completion_tokens")
    return out


def with_cached_tokens(raw: bytes, cached: int | None) -> bytes:
    """An OpenAI body with ``usage.prompt_tokens_details.cached_tokens`` set from the
    server's own figure when the upstream left it out; otherwise the bytes unchanged."""
    if cached is None or b'"usage"' not in raw or b'"cached_tokens"' in raw:
        return raw
    body = decode_event(raw.strip())
    if body is None or not isinstance(body.get("usage"), dict):
        return raw
    details = body["usage"].setdefault("prompt_tokens_details", {})
    if not isinstance(details, dict):
        return raw
    details["cached_tokens"] = cached
    return json.dumps(body, separators=(",", ":")).encode()
