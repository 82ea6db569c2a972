"""The one factory that builds the Application and owns its components' lifetimes."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import Gauge

from proxy.backends.embedded import EmbeddedServer
from proxy.backends.kinds import backend_for
from proxy.backends.upstream import Upstream, UpstreamSpec, detect_kind, make_session, sane_props
from proxy.config.settings import Settings
from proxy.core.conversation import MessageMemo
from proxy.core.errors import ProxyError
from proxy.core.limits import BodyBudget
from proxy.core.log import get_logger
from proxy.dialects import REGISTRY
from proxy.flow.director import Director
from proxy.flow.responses import ResponseStore
from proxy.records.metrics import Metrics
from proxy.records.store import RecordStore
from proxy.rewrite.engine import Rewriter
from proxy.rewrite.tape import TapeStore
from proxy.slots.manager import SlotManager
from proxy.slots.ram_cache import RamSettings, settings_from_args
from proxy.slots.servers import ServerSlots
from proxy.tokens import tokenizer_for
from proxy.tokens.gguf import AttentionKind, attention_kind
from proxy.web import security
from proxy.web.components import (
    BODIES,
    DIRECTOR,
    LIFECYCLE,
    MESSAGES,
    METRICS,
    RESPONSES,
    REWRITER,
    SETTINGS,
    SLOTS,
    STORE,
    UPSTREAMS,
    WARM_TOKEN,
    Upstreams,
)
from proxy.web.handlers import setup_routes
from proxy.web.lifecycle import Lifecycle, WarmToken
from proxy.web.warm import AUTO_DAYS, AUTO_MAX, WarmBody, Warmer, auto_bodies, busiest

log = get_logger("kvproxy.app")
# llama-server's default --ubatch-size: how far back from the end of a sliding-window
# model's slot a prompt may diverge and still be reused, and where the server takes
# checkpoints near a prompt's end (sliding-window and recurrent models; slot_table).
SWA_TAIL_TOKENS = 512

EMBEDDED = web.AppKey("embedded", EmbeddedServer)


def create_app(settings: Settings) -> web.Application:
    # The dialect handlers enforce --max-body-bytes themselves, with a dialect-shaped 413;
    # aiohttp's own limit only has to stay out of their way.
    app = web.Application(
        client_max_size=settings.max_body_bytes + 1,
        middlewares=[security.middleware(settings.exposure)],
    )
    app.on_response_prepare.append(security.cors_headers)
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app[BODIES] = BodyBudget(settings.max_inflight_body_bytes)
    app[MESSAGES] = MessageMemo()
    app[METRICS].watch_bodies(app[BODIES])
    app[LIFECYCLE] = Lifecycle(grace=max(0.0, settings.shutdown_grace))
    app[WARM_TOKEN] = WarmToken()
    Gauge("kvproxy_requests_inflight", "Requests being handled now (queued ones included)",
          registry=app[METRICS].registry).set_function(lambda: app[LIFECYCLE].inflight)  # fmt: skip
    app.cleanup_ctx.append(store_ctx)
    if not settings.upstreams:
        app.cleanup_ctx.append(embedded_ctx)
    app.cleanup_ctx.append(upstreams_ctx)
    app.cleanup_ctx.append(slots_ctx)
    if settings.warm or settings.warm_auto:
        app.cleanup_ctx.append(warm_ctx)
    setup_routes(app, dict(REGISTRY))
    return app


async def warm_ctx(app: web.Application) -> AsyncIterator[None]:
    """The warm-up task (proxy/warm.py): it waits until kvproxy listens, then sends the
    warm bodies through it."""
    settings = app[SETTINGS]
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(settings.host,
                                                                      settings.host)  # fmt: skip
    base = f"http://[{host}]:{settings.port}" if ":" in host else f"http://{host}:{settings.port}"
    bodies = list(settings.warm)
    if settings.warm_auto:
        bodies += await auto_warm(app, len(bodies))
    warmer = Warmer(bodies, base, settings.exposure.api_key, list(app[UPSTREAMS].upstreams),
                    token=app[WARM_TOKEN].value)  # fmt: skip
    task = asyncio.create_task(warmer.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def auto_warm(app: web.Application, taken: int) -> list[WarmBody]:
    """``--warm auto``: the busiest conversations' prefixes, in the slots that hold nothing
    now (so no live conversation is evicted), at most ``AUTO_MAX``."""
    for server in app[SLOTS].servers:  # what the servers hold now, not what the last run left
        if server.pins:
            await app[SLOTS].sync(server)
    free = sum(1 for server in app[SLOTS].servers if server.pins
               for slot in range(server.n_slots)
               if server.table.held.get(slot) is None)  # fmt: skip
    budget = min(AUTO_MAX, free - taken)
    if budget <= 0:
        log.info("warm_auto_skipped", free_slots=free, files=taken)
        return []
    since = time.time() - AUTO_DAYS * 86400
    # From the open store, which store_ctx checked (and a damaged one moved aside) at start.
    records = await asyncio.to_thread(app[STORE].records, since)
    bodies = auto_bodies(busiest(records, since), app[REWRITER].tapes.get, budget)
    log.info("warm_auto", prefixes=len(bodies), free_slots=free, records=len(records))
    return bodies


async def store_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    store = RecordStore(
        settings.records_dir, max_records=settings.records_max, max_bytes=settings.records_max_bytes
    )
    store.start()
    app[METRICS].watch_store(store)
    app[STORE] = store
    if settings.keep_tapes == "memory":
        # Tapes hold text: in memory mode none is written, and any an earlier run left goes.
        tapes = TapeStore(max_tapes=settings.max_tapes)
        await asyncio.to_thread(store.drop_state, b"tapes")
    else:
        tapes = TapeStore(
            max_tapes=settings.max_tapes,
            persist=lambda lineage, raw: store.put_state(b"tapes", lineage, raw),
        )
        tapes.restore(await asyncio.to_thread(store.load_state, b"tapes"))
    app[REWRITER] = Rewriter(settings.rewrite, tapes)
    app[RESPONSES] = await response_store(settings, store)
    try:
        yield
    finally:
        await store.close()


async def response_store(settings: Settings, store: RecordStore) -> ResponseStore:
    """Stored Responses hold conversation text: kept like the tapes (``--keep-tapes``)."""
    if settings.keep_tapes == "memory":
        await asyncio.to_thread(store.drop_state, b"responses")
        return ResponseStore()
    responses = ResponseStore(persist=lambda rid, raw: store.put_state(b"responses", rid, raw))
    responses.restore(await asyncio.to_thread(store.load_state, b"responses"))
    return responses


async def server_slots(app: web.Application, index: int, upstream: Upstream) -> ServerSlots:
    """One upstream's slots and tokenizer, from what its server reports (``/props``, and the
    model file's attention kind where kvproxy can read it)."""
    settings = app[SETTINGS]
    props = upstream.props or {}
    generation = props.get("default_generation_settings") or {}
    backend = backend_for(upstream.kind)
    llama = backend.pins  # a server with slots of its own, /props and slot files
    kind = AttentionKind()
    if llama and props.get("model_path") and Path(props["model_path"]).is_file():
        kind = await asyncio.to_thread(attention_kind, Path(props["model_path"]))
        log.info("model_attention", upstream=upstream.url, kind=kind.kind,
                 window=kind.window, arch=kind.arch)  # fmt: skip
    return ServerSlots(
        index=index,
        upstream=upstream,
        tokenizer=await tokenizer_for(
            upstream, settings.tokenizer, settings.server_tokens, exact=backend.tokenizes
        ),
        n_slots=backend.slot_count(props),
        n_ctx=generation.get("n_ctx"),
        # Slot files only where the server resumes from them (not sliding window).
        can_save=llama and bool(props.get("endpoint_slots", True)) and kind.resumes_from_file,
        slot_dir=settings.slot_dir if EMBEDDED in app else settings.shared_slot_dir,
        max_inflight=settings.upstream_max_inflight,
        swa_window=kind.window,
        swa_tail=swa_tail(kind, settings.upstream_swa_full),
        recurrent=kind.kind == "recurrent",
        ram=ram_settings(app, props) if llama else None,
    )


def ram_settings(app: web.Application, props: dict[str, Any]) -> RamSettings:
    """The server's host-RAM prompt cache: the embedded server's from its --llama-args,
    an external one's from --upstream-cache-ram; its token limit is the whole context."""
    settings = app[SETTINGS]
    per_slot = (props.get("default_generation_settings") or {}).get("n_ctx") or 0
    n_ctx = per_slot * max(1, int(props.get("total_slots") or 1))
    if EMBEDDED in app:
        return settings_from_args(settings.embedded.extra_args, n_ctx)
    return settings_from_args((), n_ctx, settings.upstream_cache_ram)


def swa_tail(kind: AttentionKind, swa_full: bool) -> int | None:
    """How far from a slot's end a prompt may diverge and still be reused (None: any
    common prefix is): recurrent models, and sliding-window ones unless ``--swa-full``."""
    if kind.kind == "recurrent" or (kind.kind == "sliding-window" and not swa_full):
        return SWA_TAIL_TOKENS
    return None


async def slot_manager(app: web.Application, servers: list[ServerSlots]) -> SlotManager:
    """The slot manager over ``servers``, its state loaded from the store."""
    settings, store = app[SETTINGS], app[STORE]
    manager = SlotManager(servers, settings.route, settings.slot_cache_max_bytes,
                          queue_timeout=settings.queue_timeout,
                          persist=lambda key, raw: store.put_state(b"slots", key, raw))  # fmt: skip
    loaded = manager.load_state(await asyncio.to_thread(store.load_items, b"slots"))
    log.info("slot_state_loaded", entries=loaded)
    return manager


def director(app: web.Application, manager: SlotManager) -> Director:
    """The request director; each request's record goes to the store and the metrics."""
    store, metrics = app[STORE], app[METRICS]

    def sink(fields: dict[str, Any]) -> None:
        store.put(fields)
        metrics.observe(fields)

    return Director(
        manager, app[REWRITER], app[MESSAGES], app[SETTINGS], sink, app[LIFECYCLE], app[RESPONSES]
    )


async def slots_ctx(app: web.Application) -> AsyncIterator[None]:
    """Slot tables and tokenizers, one per upstream, from what each server reports; the
    slot manager and the director over them; the idle checkpoint loop."""
    settings = app[SETTINGS]
    servers = [await server_slots(app, index, upstream)
               for index, upstream in enumerate(app[UPSTREAMS].upstreams)]  # fmt: skip
    for server in servers:
        backend = backend_for(server.upstream.kind)
        await backend.learn_context(
            server.upstream, server.ollama_ctx, settings.ollama_keep.num_ctx
        )
    manager = await slot_manager(app, servers)
    app[SLOTS] = manager
    app[DIRECTOR] = director(app, manager)
    app[METRICS].watch_read_back(servers, settings.route.restore_cost)
    loops: list[asyncio.Task[None]] = []
    if settings.slot_checkpoint_idle > 0 and any(p.can_save for p in servers):
        loops.append(asyncio.create_task(manager.checkpoint_loop(settings.slot_checkpoint_idle)))
    try:
        yield
    finally:
        await manager.aclose()
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)


async def embedded_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    server = await EmbeddedServer.astart(settings.embedded, settings.data_dir)
    app[EMBEDDED] = server
    try:
        yield
    finally:
        await server.astop()


async def upstreams_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    specs = settings.upstreams or (UpstreamSpec(url=app[EMBEDDED].url, kind="llama"),)
    upstreams: list[Upstream] = []
    try:
        for spec in specs:
            session = make_session(settings.connect_timeout, settings.upstream_timeout)
            try:
                kind = spec.kind or await detect_kind(session, spec.url)
            except BaseException:
                await session.close()
                raise
            backend = backend_for(kind)
            streams = (
                make_session(settings.connect_timeout, settings.upstream_timeout, pooled=False)
                if backend.drops_streams
                else None
            )
            # Client credentials carry kvproxy's own key when it has one: never forwarded.
            upstream = Upstream(url=spec.url, kind=kind, session=session, streams=streams,
                                drop_credentials=bool(settings.exposure.api_keys))  # fmt: skip
            upstreams.append(upstream)
            if backend.pins:
                await refresh_props(upstream)
            log.info("upstream_ready", url=spec.url, kind=kind)
    except BaseException:
        for done in upstreams:
            await close_sessions(done)
        raise
    app[UPSTREAMS] = Upstreams(upstreams)
    try:
        yield
    finally:
        for upstream in upstreams:
            await close_sessions(upstream)


async def close_sessions(upstream: Upstream) -> None:
    await upstream.session.close()
    if upstream.streams is not None:
        await upstream.streams.close()


async def refresh_props(upstream: Upstream) -> None:
    """llama-server's /props (slots, n_ctx, template); a failure now is not fatal, since
    requests map upstream failures to 502 on their own. Its answer is checked like any
    input (``sane_props``): a field out of type or range is logged and taken at a safe value."""
    try:
        props = await upstream.get_json("/props")
    except ProxyError as err:
        log.warning("upstream_props_unavailable", url=upstream.url, error=err.message)
        return
    upstream.props, problems = sane_props(props)
    for problem in problems:
        log.warning("upstream_props_untrusted", url=upstream.url, problem=problem)
