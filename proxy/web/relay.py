"""Relaying an upstream's answer to the client: as it came (``relay_native``), or
translated event by event through a bridge (``relay_translated``); one relay per ``how``."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from proxy.backends import ollama_bridge, openai_bridge
from proxy.backends.base import (
    NATIVE,
    OLLAMA_ON_LLAMA,
    OPENAI_ON_OLLAMA,
    VIA_CHAT,
    VIA_OLLAMA_CHAT,
)
from proxy.backends.upstream import Upstream, forwardable_headers
from proxy.core.conversation import Conversation, thaw
from proxy.core.errors import UpstreamError, UpstreamProtocol
from proxy.core.log import get_logger
from proxy.core.streaming import (
    NDJSONSplitter,
    SSESplitter,
    UsageObserver,
    decode_event,
    server_counters,
    strict_event,
    whole_answer,
    with_cached_tokens,
)
from proxy.dialects.base import DialectBase
from proxy.dialects.bridged import ChatBridged, typed_events
from proxy.records.record import RequestRecord

log = get_logger("kvproxy.relay")

STREAM_TYPES = ("text/event-stream", "application/x-ndjson", "application/ndjson")
# Client headers that must not reach the upstream on a re-encoded JSON request.
DROP_ON_REENCODE = frozenset({"content-type", "content-length", "accept-encoding", "expect"})


def client_headers(request: web.Request) -> dict[str, str]:
    return {
        k: v
        for k, v in forwardable_headers(request.headers).items()
        if k.lower() not in DROP_ON_REENCODE
    }


def is_stream(resp: aiohttp.ClientResponse) -> bool:
    return resp.content_type in STREAM_TYPES


def plain_json(resp: aiohttp.ClientResponse) -> bool:
    """A JSON answer as sent (bodies pass undecoded: a compressed one is not checked)."""
    encoding = resp.headers.get("Content-Encoding", "identity").lower()
    return encoding == "identity" and (resp.content_type == "application/json"
                                       or resp.content_type.endswith("+json"))  # fmt: skip


def upstream_error_message(raw: bytes) -> str:
    """The message inside an upstream error body, whatever its shape."""
    event = decode_event(raw.strip())
    if event is None:
        return raw.decode("utf-8", "replace")[:500] or "upstream error"
    err = event.get("error", event)
    if isinstance(err, dict):
        return str(err.get("message") or err)
    return str(err)


async def copy_stream(
    resp: aiohttp.ClientResponse,
    out: web.StreamResponse,
    rec: RequestRecord,
    cap: int,
    on_chunk: Callable[[bytes], Iterable[bytes]] | None,
    closing: Callable[[], list[bytes]] | None,
) -> None:
    """Each upstream chunk (translated by ``on_chunk``) to the client, then ``closing``;
    past ``cap`` bytes in all, an ``UpstreamProtocol`` (an endless stream)."""
    total = 0
    async for chunk in resp.content.iter_any():
        total += len(chunk)
        if total > cap:
            raise UpstreamProtocol(f"upstream stream exceeds {cap} bytes; it was ended")
        for piece in on_chunk(chunk) if on_chunk else [chunk]:
            rec.first_byte()
            await out.write(piece)
    for piece in closing() if closing else []:
        await out.write(piece)


async def relay_stream(
    request: web.Request,
    resp: aiohttp.ClientResponse,
    upstream: Upstream,
    dialect: DialectBase,
    rec: RequestRecord,
    on_chunk: Callable[[bytes], Iterable[bytes]] | None = None,
    headers: dict[str, str] | None = None,
    closing: Callable[[], list[bytes]] | None = None,
) -> web.StreamResponse:
    """Write each upstream chunk to the client as it arrives (optionally translated).

    An upstream failure after the headers went out ends the stream with one error frame in
    the dialect's framing; a client that goes away closes the upstream connection. An
    upstream that breaks its framing, or sends more than ``max_stream_bytes`` in all (an
    endless stream), is cut the same way, and the record says 502 and why.
    """
    out = web.StreamResponse(
        status=resp.status,
        headers=headers if headers is not None else forwardable_headers(resp.headers),
    )
    await out.prepare(request)
    # llama-server (cpp-httplib) drops the connection after a chunked stream although it
    # advertises keep-alive; closing our end instead of pooling it avoids a 502 on reuse.
    try:
        await copy_stream(resp, out, rec, upstream.limits.max_stream_bytes, on_chunk, closing)
    except ConnectionResetError:
        rec.error = "client disconnected"
        raise
    except UpstreamProtocol as err:
        rec.status, rec.error = err.status, err.message
        log.warning("upstream_broke_stream", request_id=rec.request_id, error=err.message)
        await out.write(dialect.stream_error(err))
    except (TimeoutError, aiohttp.ClientError) as exc:
        err = upstream.failure(exc)
        rec.error = err.message
        log.warning("upstream_failed_mid_stream", request_id=rec.request_id, error=err.message)
        await out.write(dialect.stream_error(err))
    finally:
        resp.close()
    await out.write_eof()
    return out


@dataclass
class Relay:
    """One routed request on its way: what goes upstream, and what observes the answer."""

    request: web.Request
    dialect: DialectBase
    conv: Conversation
    path: str
    body: dict[str, Any]
    upstream: Upstream
    rec: RequestRecord
    observer: UsageObserver
    extra_headers: dict[str, str]
    answer: Any = None  # a bridge's responder, which holds the finished answer
    # What the answer's headers wait for once the upstream answered: kvproxy's own
    # (``Director.prompt_known``: a prompt tokenized while the request was upstream)
    ready: Callable[[], Awaitable[None]] | None = None

    async def headers(self) -> dict[str, str]:
        """kvproxy's headers for the answer, complete."""
        if self.ready is not None:
            await self.ready()
        return self.extra_headers


async def relay_native(call: Relay) -> web.StreamResponse:
    """Same dialect on both sides: relay the bytes, observing counters and generated text."""
    request, dialect, path, body = call.request, call.dialect, call.path, call.body
    upstream, rec, observer = call.upstream, call.rec, call.observer
    rec.upstream_path = path
    async with upstream.request(
        "POST", path, json_body=body, headers=client_headers(request), stream=call.conv.stream
    ) as resp:
        rec.status = resp.status
        limits = upstream.limits
        observer.framing("ndjson" if resp.content_type.endswith("ndjson") else "sse",
                         limits.max_event_bytes)  # fmt: skip
        headers = {**forwardable_headers(resp.headers), **await call.headers()}
        if is_stream(resp):
            # Whole, checked events only: bytes of no event never reach the client.
            out = await relay_stream(request, resp, upstream, dialect, rec,
                                     on_chunk=observer.relay, headers=headers,
                                     closing=observer.flush)  # fmt: skip
        else:
            raw = await upstream.read(resp, limits.max_stream_bytes)
            rec.first_byte()
            if resp.status == 200 and plain_json(resp):
                whole_answer(raw)  # a 200 that is no JSON object is a 502, not passed on
            observer.observe_body(raw)
            if dialect.family == "openai" and resp.status == 200:
                raw = with_cached_tokens(raw, observer.timings.get("cache_n"))
            out = web.Response(status=resp.status, body=raw, headers=headers)
        rec.absorb(observer.counters())
        return out


def ndjson(objects: list[dict[str, Any]]) -> list[bytes]:
    return [json.dumps(o, separators=(",", ":")).encode() + b"\n" for o in objects]


@dataclass
class Translation:
    """How a translated relay reads the upstream's dialect and writes the client's."""

    splitter: SSESplitter | NDJSONSplitter  # the upstream's stream framing
    events: Callable[[dict[str, Any]], list[dict[str, Any]]]  # objects for one event
    frame: Callable[[list[dict[str, Any]]], list[bytes]]  # the client's stream framing
    closing: Callable[[], list[bytes]]  # what ends the client's stream
    content_type: str
    whole: Callable[[dict[str, Any]], dict[str, Any]]  # a non-streamed answer
    error: Callable[[str, int | None], dict[str, Any]]  # an error in the client's shape
    counters: Callable[[], dict[str, Any]]  # what the record takes from the answer


async def relay_translated(call: Relay, t: Translation) -> web.StreamResponse:
    """Relay with translation both ways (the request body is already translated)."""
    request, conv, rec, observer = call.request, call.conv, call.rec, call.observer
    rec.upstream_path, rec.translated = call.path, True
    async with call.upstream.request(
        "POST", call.path, json_body=call.body, headers=client_headers(request),
        stream=conv.stream,
    ) as resp:  # fmt: skip
        rec.status = resp.status
        limits = call.upstream.limits
        extra = await call.headers()
        if resp.status != 200:
            raw = await call.upstream.read(resp, limits.max_event_bytes)
            message = upstream_error_message(raw)
            return web.json_response(t.error(message, resp.status), status=resp.status,
                                     headers=extra)  # fmt: skip
        if not conv.stream:
            whole = whole_answer(await call.upstream.read(resp, limits.max_stream_bytes))
            observer.observe(whole)
            rec.first_byte()
            answer = t.whole(whole)
            rec.absorb(t.counters())
            return web.json_response(answer, headers=extra)

        t.splitter.max_event_bytes = limits.max_event_bytes

        def translate(chunk: bytes) -> Iterator[bytes]:
            """Event by event: what came before a bad one reaches the client."""
            for _raw, payload in t.splitter.events(chunk):
                event = None if payload is None else strict_event(payload)
                if event is not None and "error" in event:
                    yield from t.frame([t.error(upstream_error_message(payload or b""), None)])
                elif event is not None:
                    observer.observe(event)
                    yield from t.frame(t.events(event))

        out = await relay_stream(
            request, resp, call.upstream, call.dialect, rec,
            on_chunk=translate, headers={"Content-Type": t.content_type, **extra},
            closing=t.closing,
        )  # fmt: skip
        rec.absorb(t.counters())
        return out


def sse(objects: list[dict[str, Any]]) -> list[bytes]:
    return [b"data: " + json.dumps(o, separators=(",", ":")).encode() + b"\n\n" for o in objects]


async def relay_ollama_bridge(call: Relay) -> web.StreamResponse:
    """An ollama request answered by llama-server: translate there and back."""
    endpoint = "chat" if call.conv.kind == "chat" else "generate"
    responder = ollama_bridge.OllamaResponder(endpoint=endpoint, model=call.conv.model or "")
    return await relay_translated(call, Translation(
        splitter=SSESplitter(), events=responder.on_event, frame=ndjson,
        closing=lambda: ndjson(responder.closing_frames()), content_type="application/x-ndjson",
        whole=responder.whole, error=lambda message, _status: {"error": message},
        counters=lambda: server_counters(responder.timings, responder.usage),
    ))  # fmt: skip


async def relay_openai_on_ollama(call: Relay) -> web.StreamResponse:
    """An OpenAI chat request answered by ollama's /api/chat: translate there and back."""
    options = thaw(call.conv.params).get("stream_options") or {}
    responder = openai_bridge.OpenAIResponder(
        model=call.conv.model or "", include_usage=bool(options.get("include_usage"))
    )

    def error(message: str, status: int | None) -> dict[str, Any]:
        return {"error": {"message": message, "type": "upstream_error", "code": status}}

    return await relay_translated(call, Translation(
        splitter=NDJSONSplitter(), events=responder.on_object, frame=sse,
        closing=lambda: [b"data: [DONE]\n\n"], content_type="text/event-stream",
        whole=responder.whole, error=error, counters=call.observer.counters,
    ))  # fmt: skip


def error_for(dialect: DialectBase) -> Callable[[str, int | None], dict[str, Any]]:
    """An upstream error in the client's own protocol: a whole body, or (``status`` None)
    the event that ends a stream (Anthropic's ``error``, Responses' ``error``)."""

    def error(message: str, status: int | None) -> dict[str, Any]:
        err = UpstreamError(message)
        err.status = status or err.status
        if status is None and isinstance(dialect, ChatBridged):
            return dialect.error_event(err)
        return dialect.error_body(err)

    return error


async def relay_via_chat(call: Relay) -> web.StreamResponse:
    """An Anthropic or Responses request answered by llama-server's chat endpoint: chat
    chunks in, the client's typed events out (the dialect's responder)."""
    assert isinstance(call.dialect, ChatBridged)
    responder = call.dialect.responder(call.conv)
    call.answer = responder
    return await relay_translated(call, Translation(
        splitter=SSESplitter(), events=responder.on_chunk, frame=typed_events,
        closing=lambda: typed_events(responder.closing()), content_type="text/event-stream",
        whole=responder.whole, error=error_for(call.dialect),
        counters=call.observer.counters,
    ))  # fmt: skip


async def relay_via_ollama_chat(call: Relay) -> web.StreamResponse:
    """The same, answered by ollama's ``/api/chat``: its objects become chat chunks first
    (``openai_bridge``), then the client's events."""
    assert isinstance(call.dialect, ChatBridged)
    responder = call.dialect.responder(call.conv)
    chat = openai_bridge.OpenAIResponder(model=call.conv.model or "", include_usage=True)
    call.answer = responder

    def events(obj: dict[str, Any]) -> list[dict[str, Any]]:
        return [e for chunk in chat.on_object(obj) for e in responder.on_chunk(chunk)]

    return await relay_translated(call, Translation(
        splitter=NDJSONSplitter(), events=events, frame=typed_events,
        closing=lambda: typed_events(responder.closing()), content_type="text/event-stream",
        whole=lambda obj: responder.whole(chat.whole(obj)), error=error_for(call.dialect),
        counters=call.observer.counters,
    ))  # fmt: skip


RELAYS = {NATIVE: relay_native, OLLAMA_ON_LLAMA: relay_ollama_bridge,
          OPENAI_ON_OLLAMA: relay_openai_on_ollama, VIA_CHAT: relay_via_chat,
          VIA_OLLAMA_CHAT: relay_via_ollama_chat}  # fmt: skip
