"""Issue 21: an upstream that answers, but not sanely. Broken framing, one huge event, an
endless stream, invalid JSON, a malformed or trickling /props: each is a clean error in the
client's dialect (an error frame mid-stream, a 502 otherwise) and a 502 record, never a
hang, a traceback or unbounded memory. The fake upstreams here only inject faults."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from proxy.backends.upstream import UpstreamLimits
from proxy.config.exposure import Exposure
from proxy.records.read import read_records
from proxy.web.components import SLOTS, STORE, UPSTREAMS
from tests.integration.fakes import fake_upstream, kvproxy

CHAT = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
OLLAMA_CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
FIRST = b'data: {"choices":[{"index":0,"delta":{"content":"Hel"}}]}\n\n'
SECOND = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"
    b'data: {"choices":[{"index":0,"delta":{"content":"INJECTED"}}]}\n\n'
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def raw_upstream(body: bytes) -> tuple[asyncio.Server, str]:
    """A server that answers any request with ``body`` as raw bytes, then closes (an HTTP
    response delimited by the end of the connection, as HTTP/1.0 servers send them)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


async def start(url: str, tmp_path: Path, **options: Any) -> TestClient:
    return await kvproxy(url, tmp_path, upstream_timeout=5, connect_timeout=5, **options)


def limit(client: TestClient, **bounds: Any) -> None:
    """Tighter bounds than the defaults, so that a test need not send hundreds of MiB."""
    for upstream in client.app[UPSTREAMS].upstreams:
        upstream.limits = UpstreamLimits(**bounds)


async def records(client: TestClient, tmp_path: Path) -> list[dict[str, Any]]:
    await client.app[STORE].flush()
    return [r for r in read_records(tmp_path / "records") if r.get("dialect")]


@pytest.fixture
async def fake():
    """A fake upstream (aiohttp) with the given POST handlers, and kvproxy in front of it."""
    started: list[Any] = []

    async def make(tmp_path: Path, routes: dict[str, Handler], props: Any = None,
                   **options: Any) -> TestClient:  # fmt: skip
        upstream = await fake_upstream(routes, props)
        started.append(upstream)
        client = await start(str(upstream.make_url("")).rstrip("/"), tmp_path, **options)
        started.append(client)
        return client

    yield make
    for item in reversed(started):
        await item.close()


# --- A. streams and bodies ---------------------------------------------------------------


async def test_a_second_http_response_inside_a_stream_is_an_error_frame(tmp_path: Path) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
    server, url = await raw_upstream(head + FIRST + SECOND)
    client = await start(url, tmp_path)
    try:
        resp = await client.post("/v1/chat/completions", json=CHAT)
        body = await resp.read()
        assert body.startswith(FIRST)
        assert b"HTTP/1.1" not in body and b"INJECTED" not in body
        assert b'"type": "upstream_error"' in body and body.endswith(b"\n\n")
        (rec,) = await records(client, tmp_path)
        assert rec["status"] == 502 and "framing" in rec["error"]
    finally:
        await client.close()
        server.close()


async def test_an_oversized_event_ends_the_stream(fake, tmp_path: Path) -> None:
    async def huge(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(FIRST)
        await resp.write(b'data: {"choices":[{"delta":{"content":"')
        for _ in range(64):  # 4 MiB of one event, in 64 KiB pieces, against a 1 MiB bound
            await resp.write(b"x" * 65536)
        await resp.write(b'"}}]}\n\n')
        return resp

    client = await fake(tmp_path, {"/v1/chat/completions": huge})
    limit(client, max_event_bytes=1 << 20)
    resp = await client.post("/v1/chat/completions", json=CHAT)
    body = await resp.read()
    assert body.startswith(FIRST) and len(body) < 1 << 20
    assert b"upstream_error" in body and b"event" in body
    (rec,) = await records(client, tmp_path)
    assert rec["status"] == 502 and "event" in rec["error"]


async def test_an_endless_stream_is_cut_at_the_stream_bound(fake, tmp_path: Path) -> None:
    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for _ in range(100_000):  # stops by itself should kvproxy never hang up
                await resp.write(FIRST)
        except (ConnectionResetError, RuntimeError):
            pass
        return resp

    client = await fake(tmp_path, {"/v1/chat/completions": endless})
    limit(client, max_stream_bytes=200_000)
    resp = await client.post("/v1/chat/completions", json=CHAT)
    body = await asyncio.wait_for(resp.read(), 30)
    assert len(body) < 300_000 and b"upstream_error" in body
    (rec,) = await records(client, tmp_path)
    assert rec["status"] == 502 and "bytes" in rec["error"]


async def test_an_endless_ollama_bridged_stream_is_cut_too(fake, tmp_path: Path) -> None:
    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for _ in range(100_000):
                await resp.write(FIRST)
        except (ConnectionResetError, RuntimeError):
            pass
        return resp

    client = await fake(tmp_path, {"/v1/chat/completions": endless})
    limit(client, max_stream_bytes=200_000)
    resp = await client.post("/api/chat", json=OLLAMA_CHAT)
    lines = (await asyncio.wait_for(resp.read(), 30)).splitlines()
    assert "error" in json.loads(lines[-1])


async def test_invalid_json_from_the_upstream_is_a_502(fake, tmp_path: Path) -> None:
    async def garbage(request: web.Request) -> web.Response:
        return web.Response(body=b'{"choices": [oops', content_type="application/json")

    client = await fake(tmp_path, {"/v1/chat/completions": garbage})
    native = await client.post("/v1/chat/completions", json={**CHAT, "stream": False})
    assert native.status == 502
    assert (await native.json())["error"]["type"] == "upstream_error"
    bridged = await client.post("/api/chat", json={**OLLAMA_CHAT, "stream": False})
    assert bridged.status == 502 and "JSON" in (await bridged.json())["error"]
    recs = await records(client, tmp_path)
    assert [r["status"] for r in recs] == [502, 502]
    assert all("JSON" in r["error"] for r in recs)


async def test_invalid_json_inside_a_stream_is_an_error_frame(fake, tmp_path: Path) -> None:
    async def bad_event(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(FIRST + b"data: {not json\n\n" + FIRST)
        return resp

    client = await fake(tmp_path, {"/v1/chat/completions": bad_event})
    body = await (await client.post("/v1/chat/completions", json=CHAT)).read()
    assert body.startswith(FIRST) and b"not json" not in body and b"upstream_error" in body
    lines = (await (await client.post("/api/chat", json=OLLAMA_CHAT)).read()).splitlines()
    assert "error" in json.loads(lines[-1])


async def test_an_oversized_whole_answer_is_a_502(fake, tmp_path: Path) -> None:
    async def big(request: web.Request) -> web.Response:
        text = "x" * 300_000
        return web.json_response({"choices": [{"message": {"content": text}}]})

    client = await fake(tmp_path, {"/v1/chat/completions": big})
    limit(client, max_stream_bytes=100_000)
    resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": False})
    assert resp.status == 502 and "bytes" in (await resp.json())["error"]["message"]


async def test_an_oversized_forwarded_answer_is_a_502_not_held(fake, tmp_path: Path) -> None:
    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 300_000, content_type="application/octet-stream")

    client = await fake(tmp_path, {"/anything": big})
    limit(client, max_stream_bytes=100_000)
    resp = await client.post("/anything", data=b"{}")
    assert resp.status == 502 and "bytes" in (await resp.json())["error"]


async def test_llama_server_error_events_still_pass(fake, tmp_path: Path) -> None:
    """llama-server's own ``error:`` field, comments and [DONE] are sound framing."""
    sound = FIRST + b': keep-alive\n\nerror: {"code":500,"message":"boom"}\n\ndata: [DONE]\n\n'

    async def answer(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(sound)
        return resp

    client = await fake(tmp_path, {"/v1/chat/completions": answer})
    body = await (await client.post("/v1/chat/completions", json=CHAT)).read()
    assert body == sound


# --- B. start-up reads /props as untrusted ---------------------------------------------------


@pytest.mark.parametrize(
    ("props", "slots", "n_ctx"),
    [
        ({"total_slots": 50_000_000, "default_generation_settings": {"n_ctx": 4096}}, 1, 4096),
        ({"total_slots": "many", "default_generation_settings": {"n_ctx": -5}}, 1, None),
        ({"total_slots": 2, "default_generation_settings": ["n_ctx"]}, 2, None),
        (["not", "an", "object"], 1, None),
    ],
)
async def test_start_up_survives_malformed_props(fake, tmp_path: Path, props: Any, slots: int,
                                                 n_ctx: int | None) -> None:  # fmt: skip
    client = await fake(tmp_path, {}, props=props, tokenizer=None, server_tokens=True)
    (server,) = client.app[SLOTS].servers
    assert server.n_slots == slots and server.n_ctx == n_ctx


async def test_start_up_is_not_held_by_a_trickling_props(tmp_path: Path) -> None:
    async def trickle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        try:
            await resp.write(b'{"total_slots": 1, "pad": "')
            for _ in range(600):  # one byte every 0.05 s: 30 s, under any idle timeout
                await resp.write(b"x")
                await asyncio.sleep(0.05)
        except (ConnectionResetError, RuntimeError):
            pass
        return resp

    app = web.Application()
    app.router.add_get("/props", trickle)
    upstream = TestServer(app)
    await upstream.start_server()
    from proxy.backends.upstream import Upstream, make_session

    session = make_session(5, 5)
    up = Upstream(url=str(upstream.make_url("")).rstrip("/"), kind="llama", session=session,
                  limits=UpstreamLimits(json_deadline=0.5))  # fmt: skip
    from proxy.core.errors import UpstreamTimeout

    try:
        with pytest.raises(UpstreamTimeout):
            await asyncio.wait_for(up.get_json("/props"), 20)
    finally:
        await session.close()
        await upstream.close()


# --- D. kvproxy's own key stays with kvproxy -----------------------------------------------------


async def test_kvproxys_own_key_is_not_forwarded(fake, tmp_path: Path) -> None:
    seen: list[dict[str, str]] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append({k.lower(): v for k, v in request.headers.items()})
        return web.json_response({"choices": [{"message": {"content": "ok"}}]})

    client = await fake(tmp_path, {"/v1/chat/completions": echo, "/other": echo},
                        exposure=Exposure(api_keys=frozenset({"sekrit"})))  # fmt: skip
    for header in ({"Authorization": "Bearer sekrit"}, {"x-api-key": "sekrit"},
                   {"api-key": "sekrit"}):  # fmt: skip
        resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": False},
                                 headers=header)  # fmt: skip
        assert resp.status == 200
        resp = await client.post("/other", data=b"{}", headers=header)
        assert resp.status == 200
    assert len(seen) == 6
    for headers in seen:
        assert not {"authorization", "x-api-key", "api-key"} & headers.keys()
        assert "sekrit" not in json.dumps(headers)
