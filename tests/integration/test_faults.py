"""Fault injection: an upstream that refuses, stalls, fails or resets mid-stream.

The fake upstream here only injects faults; every feature is proven against the real
llama-server in tests/e2e.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from proxy.backends.embedded import free_port
from proxy.backends.upstream import UpstreamSpec
from proxy.config.settings import Settings
from proxy.web.app import create_app

CHAT = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
OLLAMA_CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
FIRST = b'data: {"choices":[{"index":0,"delta":{"content":"Hel"}}]}\n\n'


async def reset_mid_stream(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(FIRST)
    await asyncio.sleep(0.05)
    assert request.transport is not None
    request.transport.close()
    return resp


async def stall(request: web.Request) -> web.StreamResponse:
    await asyncio.sleep(30)
    return web.json_response({})


async def stall_mid_stream(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(FIRST)
    await asyncio.sleep(30)
    return resp


async def fail_500(request: web.Request) -> web.StreamResponse:
    return web.json_response({"error": {"code": 500, "message": "model exploded"}}, status=500)


async def ok(request: web.Request) -> web.StreamResponse:
    return web.json_response({"choices": [{"message": {"content": "fine"}}]})


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def proxy_for(
    handler: Handler, timeout: float = 0.5, **options: Any
) -> tuple[TestClient, TestServer]:
    upstream_app = web.Application()
    upstream_app.router.add_post("/v1/chat/completions", handler)
    upstream_app.router.add_post("/ok", ok)
    upstream = TestServer(upstream_app)
    await upstream.start_server()
    settings = Settings(
        upstreams=(UpstreamSpec(url=str(upstream.make_url("")).rstrip("/"), kind="llama"),),
        upstream_timeout=timeout,
        connect_timeout=timeout,
        **options,
    )
    client = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    return client, upstream


@pytest.fixture
async def make_proxy():
    started: list[tuple[TestClient, TestServer]] = []

    async def make(handler: Handler, timeout: float = 0.5) -> TestClient:
        pair = await proxy_for(handler, timeout)
        started.append(pair)
        return pair[0]

    yield make
    for client, upstream in started:
        await client.close()
        await upstream.close()


async def test_reset_mid_stream_ends_with_an_error_frame(make_proxy) -> None:
    client = await make_proxy(reset_mid_stream)
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 200
    body = await resp.read()
    assert body.startswith(FIRST)
    assert b'"type": "upstream_error"' in body and body.endswith(b"\n\n")
    # The proxy keeps serving.
    again = await client.post("/v1/chat/completions", json={**CHAT, "stream": False})
    assert again.status in (200, 502)


async def test_reset_mid_stream_ollama_gets_an_ndjson_error(make_proxy) -> None:
    client = await make_proxy(reset_mid_stream)
    resp = await client.post("/api/chat", json=OLLAMA_CHAT)
    lines = (await resp.read()).splitlines()
    assert lines[0].startswith(b'{"model":"m"') and b'"content":"Hel"' in lines[0]
    assert any(b'"error"' in line for line in lines[1:])


async def test_stalled_upstream_is_504(make_proxy) -> None:
    client = await make_proxy(stall)
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 504
    assert (await resp.json())["error"]["type"] == "upstream_timeout"
    resp = await client.post("/api/chat", json=OLLAMA_CHAT)
    assert resp.status == 504 and "did not answer" in (await resp.json())["error"]


async def test_stall_mid_stream_ends_the_stream(make_proxy) -> None:
    client = await make_proxy(stall_mid_stream)
    resp = await client.post("/v1/chat/completions", json=CHAT)
    body = await asyncio.wait_for(resp.read(), 10)
    assert body.startswith(FIRST) and b"upstream_timeout" in body


async def test_upstream_500_passes_through_in_the_clients_dialect(make_proxy) -> None:
    client = await make_proxy(fail_500)
    native = await client.post("/v1/chat/completions", json=CHAT)
    assert native.status == 500
    assert (await native.json())["error"]["message"] == "model exploded"
    bridged = await client.post("/api/chat", json=OLLAMA_CHAT)
    assert bridged.status == 500 and (await bridged.json()) == {"error": "model exploded"}


async def test_refused_upstream_is_502_and_forwarding_too() -> None:
    settings = Settings(
        upstreams=(UpstreamSpec(url=f"http://127.0.0.1:{free_port()}", kind="llama"),)
    )
    async with TestClient(TestServer(create_app(settings))) as client:
        resp = await client.post("/v1/chat/completions", json=CHAT)
        assert resp.status == 502 and "failed" in (await resp.json())["error"]["message"]
        resp = await client.post("/api/generate", json={"model": "m", "prompt": "x"})
        assert resp.status == 502 and isinstance((await resp.json())["error"], str)
        resp = await client.get("/health")
        assert resp.status == 502


async def test_connection_dropped_before_an_answer_is_sent_once_more(make_proxy) -> None:
    """A pooled connection the server closed (keep-alive race) must not surface as a 502."""
    calls = []

    async def drop_first(request: web.Request) -> web.StreamResponse:
        calls.append(1)
        if len(calls) == 1:
            assert request.transport is not None
            request.transport.close()
            await asyncio.sleep(0.1)
        return web.json_response({"choices": [{"message": {"content": "ok"}}]})

    client = await make_proxy(drop_first)
    resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": False})
    assert resp.status == 200 and len(calls) == 2


async def test_request_bodies_in_flight_are_bounded_with_a_503() -> None:
    """Issue 10: concurrent 32 MiB bodies were held without any total bound."""
    client, upstream = await proxy_for(ok, max_inflight_body_bytes=1000)
    release = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield b'{"messages": [{"role": "user", "content": "' + b"x" * 700
        await release.wait()
        yield b'"}]}'

    try:
        headers = {"Content-Type": "application/json"}
        first = asyncio.create_task(
            client.post("/v1/chat/completions", data=slow_body(), headers=headers)
        )
        await asyncio.sleep(0.3)
        big = {"messages": [{"role": "user", "content": "y" * 700}]}
        second = await client.post("/v1/chat/completions", json=big)
        assert second.status == 503 and second.headers["Retry-After"] == "5"
        assert "--max-inflight-body-bytes" in (await second.json())["error"]["message"]
        forwarded = await client.post("/ok", data=b"z" * 700)
        assert forwarded.status == 503
        release.set()
        assert (await first).status == 200
        again = await client.post("/v1/chat/completions", json=big)  # the budget came back
        assert again.status == 200
        metrics = await (await client.get("/metrics")).text()
        assert "kvproxy_bodies_refused 2.0" in metrics
        assert "kvproxy_body_bytes_inflight 0.0" in metrics
    finally:
        await client.close()
        await upstream.close()
