"""Incremental SSE and NDJSON framing: split a byte stream into events as chunks arrive.

The upstream is trusted to answer, not to answer sanely (docs/deploy.md): the splitters
check each event's framing and size as it completes, and the native relay forwards whole,
checked events (``UsageObserver.relay``), so that bytes that are no event of the announced
framing (a second HTTP response written into the stream, say) never reach the client. Each
chunk is scanned once: a growing event is not searched again from its start.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from proxy.core.errors import UpstreamProtocol

MIB = 1024 * 1024
MAX_EVENT_BYTES = 8 * MIB  # one SSE event or NDJSON line (proxy/upstream.py UpstreamLimits)
MAX_TEXT_CHARS = 16 * MIB  # generated text kept for the prefix index and the tape
# SSE fields (WHATWG) plus llama-server's own ``error:``; a comment line starts with ":".
SSE_FIELDS = frozenset({b"data", b"event", b"id", b"retry", b"error"})


def too_big(size: int, limit: int) -> UpstreamProtocol:
    return UpstreamProtocol(f"upstream sent one event of over {limit} bytes (at {size}); "
                            "the stream was ended")  # fmt: skip


def bad_framing(what: str) -> UpstreamProtocol:
    """Not the bytes themselves: the message reaches the client, and they are the
    upstream's (a second HTTP response, say)."""
    return UpstreamProtocol(f"upstream broke its {what}; the stream was ended")


class SSESplitter:
    """Yields the ``data:`` payload of each complete server-sent event; ``events`` yields
    each event's bytes too. A line that is no SSE field, or an event over
    ``max_event_bytes``, raises ``UpstreamProtocol``."""

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self.max_event_bytes = max_event_bytes
        self._buf = bytearray()
        self._scan = 0  # where the search for the next blank line resumes
        self._cr = False  # the last chunk ended in "\r": its "\n" may come next

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        return iter([payload for _raw, payload in self.events(chunk) if payload is not None])

    def events(self, chunk: bytes) -> Iterator[tuple[bytes, bytes | None]]:
        """(the event with its blank line, its data payload or None) for each event the
        chunk completes, one at a time: the events before a bad one still come out."""
        if self._cr:
            chunk, self._cr = b"\r" + chunk, False
        if chunk.endswith(b"\r"):
            chunk, self._cr = chunk[:-1], True
        buf = self._buf
        buf += chunk.replace(b"\r\n", b"\n")
        start, pos = 0, max(0, self._scan - 1)
        try:
            while (end := buf.find(b"\n\n", pos)) >= 0:
                if end - start > self.max_event_bytes:
                    raise too_big(end - start, self.max_event_bytes)
                event = bytes(buf[start:end])
                start = pos = end + 2
                if event.strip(b"\n"):
                    yield event.lstrip(b"\n") + b"\n\n", sse_payload(event)
        finally:
            del buf[:start]
            self._scan = len(buf)
        if len(buf) > self.max_event_bytes:
            raise too_big(len(buf), self.max_event_bytes)

    def flush(self) -> list[tuple[bytes, bytes | None]]:
        """An unterminated last event, at the end of the stream."""
        rest, self._buf, self._scan = bytes(self._buf).strip(b"\n"), bytearray(), 0
        return [(rest + b"\n\n", sse_payload(rest))] if rest else []


def sse_payload(event: bytes) -> bytes | None:
    """The joined ``data:`` lines of one event (None: it has none), checking each line."""
    data = []
    for line in event.split(b"\n"):
        if not line or line.startswith(b":"):
            continue
        name = line.split(b":", 1)[0]
        if name not in SSE_FIELDS:
            raise bad_framing("SSE framing (a line that is no SSE field)")
        if name == b"data":
            data.append(line[5:].lstrip())
    return b"\n".join(data) if data else None


class NDJSONSplitter:
    """Yields each complete line; a line over ``max_event_bytes`` raises."""

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self.max_event_bytes = max_event_bytes
        self._buf = bytearray()
        self._scan = 0

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        return iter([payload for _raw, payload in self.events(chunk) if payload is not None])

    def events(self, chunk: bytes) -> Iterator[tuple[bytes, bytes | None]]:
        buf = self._buf
        buf += chunk
        start, pos = 0, self._scan
        try:
            while (end := buf.find(b"\n", pos)) >= 0:
                if end - start > self.max_event_bytes:
                    raise too_big(end - start, self.max_event_bytes)
                line = bytes(buf[start:end]).strip()
                start = pos = end + 1
                if line:
                    yield line + b"\n", line
        finally:
            del buf[:start]
            self._scan = len(buf)
        if len(buf) > self.max_event_bytes:
            raise too_big(len(buf), self.max_event_bytes)

    def flush(self) -> list[tuple[bytes, bytes | None]]:
        rest, self._buf, self._scan = bytes(self._buf).strip(), bytearray(), 0
        return [(rest + b"\n", rest)] if rest else []


def decode_event(payload: bytes) -> dict[str, Any] | None:
    """A JSON object from one event, or None for ``[DONE]`` and anything unparseable."""
    if payload == b"[DONE]":
        return None
    try:
        value = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def strict_event(payload: bytes) -> dict[str, Any] | None:
    """A JSON object from one streamed event, None for ``[DONE]``; anything else is the
    upstream breaking its protocol."""
    if payload == b"[DONE]":
        return None
    event = decode_event(payload)
    if event is None:
        raise bad_framing("event framing (an event that is no JSON object)")
    return event


def whole_answer(raw: bytes) -> dict[str, Any]:
    """A non-streamed answer, which must be one JSON object."""
    event = decode_event(raw.strip())
    if event is None:
        raise UpstreamProtocol("upstream sent invalid JSON (no JSON object) with status 200")
    return event


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

    def __init__(self, framing: str = "sse", max_event_bytes: int = MAX_EVENT_BYTES,
                 max_text_chars: int = MAX_TEXT_CHARS) -> None:  # fmt: skip
        self.max_event_bytes = max_event_bytes
        self.max_text_chars = max_text_chars
        self._splitter: SSESplitter | NDJSONSplitter = SSESplitter(max_event_bytes)
        self.framing(framing)
        self.timings: dict[str, Any] = {}
        self.usage: dict[str, Any] = {}
        self.ollama: dict[str, Any] = {}
        self._text: list[str] = []
        self._chars = 0
        self.text_truncated = False  # more text came than ``max_text_chars``: not kept
        self.finish_reason: str | None = None

    def framing(self, framing: str, max_event_bytes: int | None = None) -> None:
        if max_event_bytes is not None:
            self.max_event_bytes = max_event_bytes
        self._splitter = (SSESplitter(self.max_event_bytes) if framing == "sse"
                          else NDJSONSplitter(self.max_event_bytes))  # fmt: skip

    @property
    def text(self) -> str:
        return "".join(self._text)

    def feed(self, chunk: bytes) -> None:
        for payload in self._splitter.feed(chunk):
            self.observe(decode_event(payload))

    def relay(self, chunk: bytes) -> Iterator[bytes]:
        """The whole events this chunk completes, each checked (framing, size, JSON) and
        observed before it comes out: what the native relay forwards. A bad one raises
        ``UpstreamProtocol`` after the good ones before it."""
        return self._checked(self._splitter.events(chunk))

    def flush(self) -> list[bytes]:
        """An unterminated last event at the end of the stream, checked likewise."""
        return list(self._checked(iter(self._splitter.flush())))

    def _checked(self, events: Iterator[tuple[bytes, bytes | None]]) -> Iterator[bytes]:
        for raw, payload in events:
            if payload is not None:
                self.observe(strict_event(payload))
            yield raw

    def observe(self, event: dict[str, Any] | None) -> None:
        if not event:
            return
        text, reason = generated_text(event)
        if text and not self.text_truncated:
            self._chars += len(text)
            if self._chars > self.max_text_chars:
                # Longer than any context: not kept at all (no slot or tape can hold it).
                self.text_truncated = True
                self._text.clear()
            else:
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
