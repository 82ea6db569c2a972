"""A fake upstream (aiohttp) with given routes, and kvproxy's application in front of it:
for fault injection only, never to claim a feature works."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from proxy.backends.upstream import UpstreamSpec
from proxy.config.settings import Settings
from proxy.web.app import create_app

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def fake_upstream(routes: dict[str, Handler], props: Any = None,
                        method: str = "POST") -> TestServer:  # fmt: skip
    """A started server answering ``routes`` (and ``/props`` with ``props`` when given)."""
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_route(method, path, handler)
    if props is not None:

        async def give_props(_request: web.Request) -> web.Response:
            return web.json_response(props)

        app.router.add_get("/props", give_props)
    upstream = TestServer(app)
    await upstream.start_server()
    return upstream


async def kvproxy(url: str, tmp_path: Path, **options: Any) -> TestClient:
    """kvproxy's application in front of ``url`` (a llama-server), started."""
    settings = Settings(upstreams=(UpstreamSpec(url=url.rstrip("/"), kind="llama"),),
                        data_dir=tmp_path, **options)  # fmt: skip
    client = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    return client
