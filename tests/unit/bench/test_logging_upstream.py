"""The benchmarks' logging proxy: a client that hangs up once it has its answer neither
loses the server's figures nor prints a traceback (a fake upstream: fault injection)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiohttp import web

from bench.logging_upstream import LoggingUpstream


async def test_a_client_hanging_up_before_the_last_chunk(caplog: pytest.LogCaptureFixture) -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        out = web.StreamResponse()
        await out.prepare(request)
        await out.write(b'data: {"content": "a"}\n\n')
        await asyncio.sleep(0.3)
        await out.write(b'data: {"timings": {"prompt_n": 7, "cache_n": 3}}\n\n')
        await asyncio.sleep(0.1)
        await out.write(b"data: [DONE]\n\n")
        return out

    app = web.Application()
    app.router.add_post("/v1/chat/completions", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        with caplog.at_level(logging.ERROR), LoggingUpstream(f"http://127.0.0.1:{port}") as up:
            reader, writer = await asyncio.open_connection("127.0.0.1", up.port)
            writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Length: 2\r\n\r\n{}")  # fmt: skip
            await writer.drain()
            assert b'"content"' in await reader.readuntil(b'"a"}')
            writer.close()  # hangs up with its answer, before the rest of the stream
            for _ in range(50):
                if up.exchanges and up.exchanges[0].prompt_n is not None:
                    break
                await asyncio.sleep(0.1)
            assert (up.exchanges[0].prompt_n, up.exchanges[0].cache_n) == (7, 3)
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    finally:
        await runner.cleanup()
