"""Issue 20.6: llama-server drops the connection of a streamed answer, so kvproxy closes it;
a streamed call must not take the pooled connection that the small reads (/slots before each
route, /props, /tokenize) keep alive, or the next request opens a new connection in its own
time (half a millisecond on loopback, a round trip on a network). Fault-free, transport
only: the fake upstream counts connections, it claims nothing about a model."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from proxy.backends.kinds import backend_for
from proxy.backends.upstream import UpstreamSpec
from proxy.config.settings import Settings
from proxy.web.app import create_app
from proxy.web.components import UPSTREAMS
from tests.integration.fakes import kvproxy

PROPS = {"total_slots": 2, "default_generation_settings": {"n_ctx": 4096}}
SLOT = {"is_processing": False, "n_ctx": 4096, "prompt": ""}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CHAT = {"messages": [{"role": "user", "content": "hi"}], "stream": True}


async def test_a_streamed_call_leaves_the_pooled_connection_to_the_small_reads(
    tmp_path: Path,
) -> None:
    streamed: list[int] = []
    small: list[int] = []  # /slots, /props, /apply-template, ...

    @web.middleware
    async def note(request: web.Request, handler: Handler) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        (streamed if request.path == "/v1/chat/completions" else small).append(peer[1])
        return await handler(request)

    async def slots(_request: web.Request) -> web.Response:
        return web.json_response([{**SLOT, "id": 0}, {**SLOT, "id": 1}])

    async def props(_request: web.Request) -> web.Response:
        return web.json_response(PROPS)

    async def chat(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        resp.force_close()  # as llama-server (cpp-httplib) does after a chunked answer
        await resp.prepare(request)
        await resp.write(b'data: {"choices":[{"index":0,"delta":{"content":"ok"}}]}\n\n')
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    app = web.Application(middlewares=[note])
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/slots", slots)
    app.router.add_get("/props", props)
    upstream = TestServer(app)
    await upstream.start_server()
    client = await kvproxy(str(upstream.make_url("/")), tmp_path)
    try:
        turns = 6
        for i in range(turns):
            body = {**CHAT, "messages": [{"role": "user", "content": f"turn {i}"}]}
            resp = await client.post("/v1/chat/completions", json=body)
            assert resp.status == 200
            await resp.read()
        assert len(streamed) == turns
        # the small reads (at most two at once: /slots beside the template) keep theirs
        assert not set(small) & set(streamed)
        assert len(set(small)) <= 2, f"small reads opened a connection per turn: {small}"
    finally:
        await client.close()
        await upstream.close()


@pytest.mark.parametrize(("kind", "own_pool"), [("llama", True), ("ollama", False)])
async def test_only_a_server_that_drops_streams_gets_a_pool_for_them(
    tmp_path: Path, kind: str, own_pool: bool
) -> None:
    """ollama (Go's net/http) keeps a finished stream's connection alive: its streams
    reuse the pooled connections as before."""
    app = web.Application()
    upstream = TestServer(app)
    await upstream.start_server()
    url = str(upstream.make_url("/")).rstrip("/")
    settings = Settings(upstreams=(UpstreamSpec(url=url, kind=kind),), data_dir=tmp_path)
    client = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    try:
        assert backend_for(kind).drops_streams is own_pool
        assert (client.app[UPSTREAMS].primary.streams is not None) is own_pool
    finally:
        await client.close()
        await upstream.close()
