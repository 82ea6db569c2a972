"""aiohttp handlers: glue between the client, the dialects and the upstream.

Dialect paths are parsed, planned and relayed; every other path is forwarded as is.
No exception leaves a handler except cancellation: errors become dialect-shaped bodies
(before the response started) or a final error frame (after it started).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from proxy.backends import ollama_bridge, openai_bridge
from proxy.backends.kinds import NATIVE, OLLAMA_ON_LLAMA, OPENAI_ON_OLLAMA, backend_for
from proxy.backends.upstream import Upstream, forwardable_headers
from proxy.core.conversation import Conversation, thaw
from proxy.core.errors import (
    BadRequest,
    PayloadTooLarge,
    ProxyError,
    RequestTimeout,
    UnsupportedMedia,
    UpstreamProtocol,
)
from proxy.core.limits import BodyHold
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
from proxy.flow.director import REQUEST_ID_HEADER, Exchange
from proxy.records.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from proxy.records.record import RequestRecord
from proxy.web.components import (
    BODIES,
    DIRECTOR,
    LIFECYCLE,
    METRICS,
    SETTINGS,
    UPSTREAMS,
    WARM_TOKEN,
)
from proxy.web.lifecycle import CLIENT_CLOSED, RETRY_AFTER, Lifecycle, end_stream
from proxy.web.warm import WARM_HEADER

log = get_logger("kvproxy.handlers")

# JSON is what every dialect takes. `curl -d` labels JSON as form data, and llama-server and
# ollama both accept that, so kvproxy does too; anything else (multipart, XML, binary) is a 415.
JSON_TYPES = frozenset(
    {"", "application/json", "text/json", "text/plain", "application/x-www-form-urlencoded"}
)
STREAM_TYPES = ("text/event-stream", "application/x-ndjson", "application/ndjson")
# Client headers that must not reach the upstream on a re-encoded JSON request.
DROP_ON_REENCODE = frozenset({"content-type", "content-length", "accept-encoding", "expect"})

# A \uD800-\uDFFF escape: only then can the body hold an unencodable lone surrogate.
LONE_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")
# Errors raised while reading the client's own body (parsing, planning, tokenizing) before
# anything went upstream: a malformed request, answered 400 without a traceback.
MALFORMED = (TypeError, ValueError, AttributeError, KeyError, IndexError, UnicodeError,
             RecursionError, OverflowError)  # fmt: skip

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def read_body(
    request: web.Request, limit: int, timeout: float = 60.0, hold: BodyHold | None = None
) -> bytes:
    """The request's body, bounded by ``limit`` bytes and ``timeout`` seconds, counted
    against the shared in-flight budget (``hold``) as it arrives."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.content.iter_any():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
                if hold is not None:
                    hold.add(len(chunk))
                chunks.append(chunk)
    except TimeoutError as exc:
        raise RequestTimeout(f"request body not received within {timeout:g} s") from exc
    return b"".join(chunks)


async def read_json(
    request: web.Request, limit: int, timeout: float = 60.0, hold: BodyHold | None = None
) -> Any:
    """The request's JSON body (see ``read_body``), or a ClientError saying why not."""
    ctype = request.content_type.lower()
    if ctype not in JSON_TYPES and not ctype.endswith("+json"):
        raise UnsupportedMedia(f"content type {ctype!r} is not supported; send application/json")
    raw = await read_body(request, limit, timeout, hold)
    if not raw.strip():
        raise BadRequest("request body is empty; a JSON object is required")
    if hold is not None:
        hold.charge_parsed()  # before parsing: a refusal costs no parse (proxy/limits.py)
    try:
        body = json.loads(raw)
    except RecursionError as exc:
        raise BadRequest("request body is nested too deeply") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {str(exc)[:200]}") from exc
    if LONE_SURROGATE.search(raw):
        try:
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise BadRequest("request body holds a lone UTF-16 surrogate (invalid text)") from exc
        except RecursionError as exc:
            raise BadRequest("request body is nested too deeply") from exc
    return body


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


async def relay_native(call: Relay) -> web.StreamResponse:
    """Same dialect on both sides: relay the bytes, observing counters and generated text."""
    request, dialect, path, body = call.request, call.dialect, call.path, call.body
    upstream, rec, observer, extra_headers = (
        call.upstream,
        call.rec,
        call.observer,
        call.extra_headers,
    )
    rec.upstream_path = path
    async with upstream.request(
        "POST", path, json_body=body, headers=client_headers(request)
    ) as resp:
        rec.status = resp.status
        limits = upstream.limits
        observer.framing("ndjson" if resp.content_type.endswith("ndjson") else "sse",
                         limits.max_event_bytes)  # fmt: skip
        headers = {**forwardable_headers(resp.headers), **extra_headers}
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
        "POST", call.path, json_body=call.body, headers=client_headers(request)
    ) as resp:
        rec.status = resp.status
        limits = call.upstream.limits
        if resp.status != 200:
            raw = await call.upstream.read(resp, limits.max_event_bytes)
            message = upstream_error_message(raw)
            return web.json_response(t.error(message, resp.status), status=resp.status,
                                     headers=call.extra_headers)  # fmt: skip
        if not conv.stream:
            whole = whole_answer(await call.upstream.read(resp, limits.max_stream_bytes))
            observer.observe(whole)
            rec.first_byte()
            answer = t.whole(whole)
            rec.absorb(t.counters())
            return web.json_response(answer, headers=call.extra_headers)

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
            on_chunk=translate, headers={"Content-Type": t.content_type, **call.extra_headers},
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


RELAYS = {NATIVE: relay_native, OLLAMA_ON_LLAMA: relay_ollama_bridge,
          OPENAI_ON_OLLAMA: relay_openai_on_ollama}  # fmt: skip


def client_gone(request: web.Request, err: ProxyError) -> bool:
    """Whether ``err`` is the client's own disconnect: a failed write to it passes through
    the upstream's response block, which maps every aiohttp error to a 502."""
    transport = request.transport
    gone = transport is None or transport.is_closing()
    return gone and isinstance(err.__cause__, ConnectionResetError)


def without_warm_header(request: web.Request) -> web.Request:
    """The request without ``x-kvproxy-warm``: it is kvproxy's own, and its value may hold
    the warm token, so it never goes upstream."""
    headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() != WARM_HEADER)
    return request.clone(headers=headers)


def dialect_handler(dialect: DialectBase) -> Handler:
    """Read the body, let the director prepare the call, relay the answer, settle; every
    error becomes one response in the dialect's shape (``error_response``)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        director, lifecycle = request.app[DIRECTOR], request.app[LIFECYCLE]
        settings, task = request.app[SETTINGS], asyncio.current_task()
        # Only kvproxy's own warmer (it knows the per-process token) marks a warm-up.
        warm = request.app[WARM_TOKEN].name_of(request.headers.get(WARM_HEADER))
        if WARM_HEADER in request.headers:
            request = without_warm_header(request)
        ex = director.admit(dialect, request.path, request.app[BODIES].hold(), warm)
        lifecycle.enter()
        try:
            lifecycle.check()  # after SIGTERM: a 503, recorded
            body = await read_json(request, settings.max_body_bytes, settings.body_timeout,
                                   ex.hold)  # fmt: skip
            call = await director.prepare(ex, body, request.headers, request.raw_path)
            assert ex.plan is not None and ex.lease is not None
            relay = Relay(request, dialect, ex.plan.conv, call.path, call.body,
                          ex.lease.server.upstream, ex.rec, ex.observer, ex.headers)  # fmt: skip
            out = await RELAYS[call.how](relay)
            director.settle(ex)
            return out
        except ProxyError as err:
            return error_response(request, ex, err, lifecycle, task)
        except (asyncio.CancelledError, ConnectionResetError):
            if lifecycle.was_cut(task):
                cut = lifecycle.cut_error()
                ex.rec.status, ex.rec.error = cut.status, cut.message
                await end_stream(request, dialect.stream_error(cut))
            else:
                ex.rec.status = CLIENT_CLOSED
                ex.rec.error = ex.rec.error or "client disconnected"
            raise
        except Exception:
            log.exception("internal_error", request_id=ex.rec.request_id, path=request.path)
            err = ProxyError("kvproxy failed to handle this request; see its log")
            ex.rec.status, ex.rec.error = err.status, err.message
            return web.json_response(dialect.error_body(err), status=err.status)
        finally:
            director.close(ex)
            lifecycle.leave()

    return handle


def error_response(request: web.Request, ex: Exchange, err: ProxyError, lifecycle: Lifecycle,
                   task: asyncio.Task[Any] | None) -> web.StreamResponse:  # fmt: skip
    """A refused or failed request as one response in its dialect's shape (a 503 with
    Retry-After), recorded; a client that went away is its own disconnect, not an error."""
    rec = ex.rec
    if client_gone(request, err):
        rec.status, rec.error = CLIENT_CLOSED, "client disconnected"
        raise ConnectionResetError("client disconnected") from err
    if lifecycle.was_cut(task):
        err = lifecycle.cut_error()
    rec.status, rec.error = err.status, err.message
    log.warning("request_rejected", request_id=rec.request_id, status=err.status,
                error=err.message, path=request.path)  # fmt: skip
    headers = {REQUEST_ID_HEADER: rec.request_id}
    if err.status == 503:
        headers["Retry-After"] = RETRY_AFTER
    resp = web.json_response(ex.dialect.error_body(err), status=err.status, headers=headers)
    if lifecycle.draining:
        resp.force_close()  # a kept-alive connection must not bring another request
    return resp


async def forward(request: web.Request) -> web.StreamResponse:
    """Any other method and path goes to the primary upstream byte for byte."""
    upstream, settings = request.app[UPSTREAMS].primary, request.app[SETTINGS]
    lifecycle = request.app[LIFECYCLE]
    lifecycle.enter()
    try:
        lifecycle.check()  # after SIGTERM: a 503
        with request.app[BODIES].hold() as hold:
            body = None
            if request.can_read_body:
                body = await read_body(request, settings.max_body_bytes, settings.body_timeout,
                                       hold)  # fmt: skip
            return await forward_body(request, upstream, body)
    except ProxyError as err:
        log.warning("forward_failed", path=request.path, status=err.status, error=err.message)
        headers = {"Retry-After": RETRY_AFTER} if err.status == 503 else None
        resp = web.json_response({"error": err.message}, status=err.status, headers=headers)
        if lifecycle.draining:
            resp.force_close()
        return resp
    finally:
        lifecycle.leave()


async def forward_body(
    request: web.Request, upstream: Upstream, body: bytes | None
) -> web.StreamResponse:
    try:
        async with upstream.request(
            request.method,
            request.raw_path,
            data=body,
            headers=forwardable_headers(request.headers),
        ) as resp:
            headers = forwardable_headers(resp.headers)
            if resp.content_length is not None or not is_stream(resp):
                raw = await upstream.read(resp, upstream.limits.max_stream_bytes)
                return web.Response(status=resp.status, body=raw, headers=headers)
            out = web.StreamResponse(status=resp.status, headers=headers)
            await out.prepare(request)
            try:
                async for chunk in resp.content.iter_any():
                    await out.write(chunk)
            finally:
                resp.close()
            await out.write_eof()
            return out
    except ProxyError as err:
        log.warning("forward_failed", path=request.path, status=err.status, error=err.message)
        return web.json_response({"error": err.message}, status=err.status)
    except web.HTTPException:
        raise
    except (TimeoutError, aiohttp.ClientError) as exc:
        err = upstream.failure(exc)
        log.warning("forward_failed", path=request.path, status=err.status, error=err.message)
        return web.Response(status=err.status, text=err.message)


def ollama_endpoint(build: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]) -> Handler:
    """``/api/tags`` and friends: synthesized from llama-server, forwarded to ollama."""

    async def handle(request: web.Request) -> web.StreamResponse:
        upstream = request.app[UPSTREAMS].primary
        if not backend_for(upstream.kind).answers_ollama_reads:
            return await forward(request)
        try:
            models = await upstream.get_json("/v1/models")
            return web.json_response(build(models, upstream.props))
        except ProxyError as err:
            return web.json_response({"error": err.message}, status=err.status)

    return handle


async def own_metrics(request: web.Request) -> web.Response:
    """kvproxy's Prometheus metrics (the upstream's are at /upstream/metrics)."""
    return web.Response(
        body=request.app[METRICS].render(), headers={"Content-Type": METRICS_CONTENT_TYPE}
    )


async def upstream_metrics(request: web.Request) -> web.StreamResponse:
    return await forward(request.clone(rel_url="/metrics"))


def setup_routes(app: web.Application, registry: dict[str, DialectBase]) -> None:
    for path, dialect in registry.items():
        app.router.add_post(path, dialect_handler(dialect))
    app.router.add_get("/metrics", own_metrics)
    app.router.add_get("/upstream/metrics", upstream_metrics)
    app.router.add_get("/api/tags", ollama_endpoint(ollama_bridge.tags))
    app.router.add_post("/api/show", ollama_endpoint(ollama_bridge.show))
    app.router.add_get("/api/version", ollama_endpoint(lambda _m, _p: ollama_bridge.version()))
    app.router.add_route("*", "/{tail:.*}", forward)
