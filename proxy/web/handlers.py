"""aiohttp handlers: glue between the client, the dialects and the upstream.

Dialect paths are parsed, planned and relayed; every other path is forwarded as is.
No exception leaves a handler except cancellation: errors become dialect-shaped bodies
(before the response started) or a final error frame (after it started).
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from proxy.backends import ollama_bridge
from proxy.backends.kinds import backend_for
from proxy.backends.upstream import Upstream, forwardable_headers
from proxy.core.errors import NotFound, ProxyError
from proxy.core.log import get_logger
from proxy.dialects import anthropic_messages, openai_responses
from proxy.dialects.base import DialectBase
from proxy.flow.director import REQUEST_ID_HEADER, Exchange
from proxy.records.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from proxy.rewrite.identity import principal_of
from proxy.web.body import read_body, read_json
from proxy.web.components import (
    BODIES,
    DIRECTOR,
    LIFECYCLE,
    METRICS,
    SETTINGS,
    SLOTS,
    UPSTREAMS,
    WARM_TOKEN,
)
from proxy.web.lifecycle import CLIENT_CLOSED, RETRY_AFTER, Lifecycle, end_stream
from proxy.web.relay import RELAYS, Relay, is_stream
from proxy.web.warm import WARM_HEADER

log = get_logger("kvproxy.handlers")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Forwarded POSTs that never run a task on a slot (llama-server's tools/server/server.cpp).
SLOT_FREE = frozenset({"/tokenize", "/detokenize", "/apply-template", "/v1/messages/count_tokens",
                       "/v1/responses/input_tokens", "/api/show"})  # fmt: skip
COUNTERS = {"/v1/messages/count_tokens": anthropic_messages.DIALECT,
            "/v1/responses/input_tokens": openai_responses.DIALECT}  # fmt: skip


def client_gone(request: web.Request, err: ProxyError) -> bool:
    """Whether ``err`` is the client's own disconnect: a failed write to it passes through
    the upstream's response block, which maps every aiohttp error to a 502."""
    transport = request.transport
    gone = transport is None or transport.is_closing()
    return gone and isinstance(err.__cause__, ConnectionResetError)


def closed_response() -> web.StreamResponse:
    """What the handler returns for a client that went away: aiohttp's attempt to send it
    fails quietly, where a raised ``ConnectionResetError`` is logged as an error of
    kvproxy's own ("Error handling request", with a traceback)."""
    return web.Response(status=CLIENT_CLOSED)


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
                                   ex.hold, director.messages)  # fmt: skip
            call = await director.prepare(ex, body, request.headers, request.raw_path)
            assert ex.plan is not None and ex.lease is not None
            relay = Relay(request, dialect, ex.plan.conv, call.path, call.body,
                          ex.lease.server.upstream, ex.rec, ex.observer, ex.headers,
                          ready=functools.partial(director.prompt_known, ex))  # fmt: skip
            out = await RELAYS[call.how](relay)
            await director.prompt_known(ex)  # a relay that never reached the headers
            ex.answer = getattr(relay.answer, "response", None)
            director.settle(ex)
            return out
        except ProxyError as err:
            return error_response(request, ex, err, lifecycle, task)
        except (asyncio.CancelledError, ConnectionResetError) as exc:
            if lifecycle.was_cut(task):
                cut = lifecycle.cut_error()
                ex.rec.status, ex.rec.error = cut.status, cut.message
                await end_stream(request, dialect.stream_error(cut))
            else:
                ex.rec.status = CLIENT_CLOSED
                ex.rec.error = ex.rec.error or "client disconnected"
            if isinstance(exc, asyncio.CancelledError):
                raise
            return closed_response()
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
        return closed_response()
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
    """Any other method and path goes to the primary upstream byte for byte. A POST kvproxy
    does not parse may make the server use a slot (``/infill``, embeddings, rerank, a slot
    action): the slot view is marked stale before and after, so the next request re-reads
    ``/slots`` before routing and no checkpoint saves what kvproxy did not put there."""
    upstream, settings = request.app[UPSTREAMS].primary, request.app[SETTINGS]
    lifecycle = request.app[LIFECYCLE]
    touches_slots = request.method == "POST" and request.path not in SLOT_FREE
    lifecycle.enter()
    try:
        lifecycle.check()  # after SIGTERM: a 503
        with request.app[BODIES].hold() as hold:
            body = None
            if request.can_read_body:
                body = await read_body(request, settings.max_body_bytes, settings.body_timeout,
                                       hold)  # fmt: skip
            if touches_slots:
                request.app[SLOTS].mark_stale(0)
            try:
                return await forward_body(request, upstream, body)
            finally:
                if touches_slots:
                    request.app[SLOTS].mark_stale(0)
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


def count_tokens(dialect: DialectBase) -> Handler:
    """``/v1/messages/count_tokens``, ``/v1/responses/input_tokens``: counted with kvproxy's
    exact tokens where it has them (no slot, no queue), else answered by the upstream."""

    async def handle(request: web.Request) -> web.StreamResponse:
        settings, director = request.app[SETTINGS], request.app[DIRECTOR]
        try:
            with request.app[BODIES].hold() as hold:
                body = await read_json(request, settings.max_body_bytes,
                                       settings.body_timeout, hold)  # fmt: skip
                count = await director.count_tokens(dialect, body, request.raw_path)
        except ProxyError as err:
            return web.json_response(dialect.error_body(err), status=err.status)
        if count is None:
            return await forward_body(request, request.app[UPSTREAMS].primary,
                                      json.dumps(body).encode())  # fmt: skip
        answer: dict[str, Any] = {"input_tokens": count}
        if dialect.family == "responses":
            answer["object"] = "response.input_tokens"
        return web.json_response(answer)

    return handle


def stored_response(dialect: DialectBase) -> Handler:
    """``GET``/``DELETE /v1/responses/{id}``: kvproxy's own store, private to the principal
    that created the response (anyone else gets the same 404 as for no such id)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        store, response_id = request.app[DIRECTOR].responses, request.match_info["id"]
        owner = principal_of(request.headers, request.query.get("user"))
        found = store.get(response_id, owner)
        if found is None:
            err = NotFound(f"Response with id '{response_id}' not found.")
            return web.json_response(dialect.error_body(err), status=err.status)
        if request.method == "DELETE":
            store.delete(response_id, owner)
            return web.json_response({"id": response_id, "object": "response",
                                      "deleted": True})  # fmt: skip
        return web.json_response(found.response)

    return handle


def setup_routes(app: web.Application, registry: dict[str, DialectBase]) -> None:
    for path, dialect in registry.items():
        app.router.add_post(path, dialect_handler(dialect))
    for path, dialect in COUNTERS.items():
        app.router.add_post(path, count_tokens(dialect))
    responses = stored_response(openai_responses.DIALECT)
    app.router.add_get("/v1/responses/{id}", responses)
    app.router.add_delete("/v1/responses/{id}", responses)
    app.router.add_get("/metrics", own_metrics)
    app.router.add_get("/upstream/metrics", upstream_metrics)
    app.router.add_get("/api/tags", ollama_endpoint(ollama_bridge.tags))
    app.router.add_post("/api/show", ollama_endpoint(ollama_bridge.show))
    app.router.add_get("/api/version", ollama_endpoint(lambda _m, _p: ollama_bridge.version()))
    app.router.add_route("*", "/{tail:.*}", forward)
