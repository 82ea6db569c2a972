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


class UsageObserver:
    """Keeps the server-reported counters seen in a response, streamed or not.

    Only events that mention ``timings``, ``usage`` or ollama's ``prompt_eval_count`` are
    decoded, so relaying a long stream costs one substring search per event.
    """

    MARKERS = (b'"timings"', b'"usage"', b'"prompt_eval_count"')

    def __init__(self, framing: str) -> None:
        self._splitter = SSESplitter() if framing == "sse" else NDJSONSplitter()
        self.timings: dict[str, Any] = {}
        self.usage: dict[str, Any] = {}
        self.ollama: dict[str, Any] = {}

    def feed(self, chunk: bytes) -> None:
        for payload in self._splitter.feed(chunk):
            if any(m in payload for m in self.MARKERS):
                self.observe(decode_event(payload))

    def observe(self, event: dict[str, Any] | None) -> None:
        if not event:
            return
        if isinstance(event.get("timings"), dict):
            self.timings = event["timings"]
        if isinstance(event.get("usage"), dict):
            self.usage = event["usage"]
        if "prompt_eval_count" in event:
            self.ollama = {
                k: event[k]
                for k in ("prompt_eval_count", "prompt_eval_duration", "eval_count")
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
    elif "prompt_tokens" in usage:
        out["prompt_tokens"] = usage["prompt_tokens"]
        details = usage.get("prompt_tokens_details") or {}
        if "cached_tokens" in details:
            out["cached_tokens"] = details["cached_tokens"]
        out["decode_tokens"] = usage.get("completion_tokens")
    return out
