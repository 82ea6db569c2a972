"""The one factory that builds the Application and owns its components' lifetimes."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from proxy.components import POOL, SETTINGS, UpstreamPool
from proxy.dialects import REGISTRY
from proxy.embedded import EmbeddedServer
from proxy.errors import ProxyError
from proxy.handlers import setup_routes
from proxy.log import get_logger
from proxy.settings import Settings
from proxy.upstream import Upstream, UpstreamSpec, detect_kind, make_session

log = get_logger("kvproxy.app")

EMBEDDED = web.AppKey("embedded", EmbeddedServer)


def create_app(settings: Settings) -> web.Application:
    # The dialect handlers enforce --max-body-bytes themselves, with a dialect-shaped 413;
    # aiohttp's own limit only has to stay out of their way.
    app = web.Application(client_max_size=settings.max_body_bytes + 1)
    app[SETTINGS] = settings
    if not settings.upstreams:
        app.cleanup_ctx.append(embedded_ctx)
    app.cleanup_ctx.append(upstreams_ctx)
    setup_routes(app, dict(REGISTRY))
    return app


async def embedded_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    server = await EmbeddedServer.astart(settings.embedded, settings.data_dir)
    app[EMBEDDED] = server
    try:
        yield
    finally:
        await server.astop()


async def upstreams_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    specs = settings.upstreams or (UpstreamSpec(url=app[EMBEDDED].url, kind="llama"),)
    upstreams = []
    for spec in specs:
        session = make_session(settings.connect_timeout, settings.upstream_timeout)
        try:
            kind = spec.kind or await detect_kind(session, spec.url)
            upstream = Upstream(url=spec.url, kind=kind, session=session)
        except BaseException:
            await session.close()
            for done in upstreams:
                await done.session.close()
            raise
        if kind == "llama":
            await refresh_props(upstream)
        log.info("upstream_ready", url=spec.url, kind=kind)
        upstreams.append(upstream)
    app[POOL] = UpstreamPool(upstreams)
    try:
        yield
    finally:
        for upstream in upstreams:
            await upstream.session.close()


async def refresh_props(upstream: Upstream) -> None:
    """llama-server's /props (slots, n_ctx, template); a failure now is not fatal, since
    requests map upstream failures to 502 on their own."""
    try:
        upstream.props = await upstream.get_json("/props")
    except ProxyError as err:
        log.warning("upstream_props_unavailable", url=upstream.url, error=err.message)
