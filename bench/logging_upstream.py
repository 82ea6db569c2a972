"""A transparent logging reverse proxy in front of the real llama-server: it forwards every
request unchanged and keeps the JSON bodies it saw and the server's own prefill counters
(``timings.prompt_n``, ``cache_n``) of each answer, so a test or a benchmark can read
exactly what was sent upstream and what it cost. Not a fake: every answer comes from the
real server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from proxy.backends.embedded import free_port

HOP = {"content-length", "transfer-encoding", "connection", "content-encoding"}
PROMPT_N = re.compile(rb'"prompt_n"\s*:\s*(\d+)')
CACHE_N = re.compile(rb'"cache_n"\s*:\s*(\d+)')


@dataclass
class Exchange:
    path: str
    body: Any
    prompt_n: int | None = None  # tokens the server prefilled for it
    cache_n: int | None = None


def last_int(pattern: re.Pattern[bytes], raw: bytes) -> int | None:
    found = pattern.findall(raw)
    return int(found[-1]) if found else None


class LoggingUpstream:
    def __init__(self, target: str) -> None:
        self.target = target
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.exchanges: list[Exchange] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LoggingUpstream:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("logging upstream did not start")
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def chat_exchanges(self) -> list[Exchange]:
        return [
            e
            for e in self.exchanges
            if e.path.endswith("/chat/completions") and isinstance(e.body, dict)
        ]

    def chats(self) -> list[dict[str, Any]]:
        """Bodies of the chat requests sent upstream, oldest first."""
        return [e.body for e in self.chat_exchanges()]

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1800))

        async def handle(request: web.Request) -> web.StreamResponse:
            raw = await request.read()
            exchange = Exchange(request.path, None)
            if raw:
                with contextlib.suppress(ValueError):
                    exchange.body = json.loads(raw)
                self.exchanges.append(exchange)
            headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP | {"host"}}
            async with session.request(
                request.method, self.target + request.path_qs, data=raw or None, headers=headers
            ) as resp:
                out = web.StreamResponse(
                    status=resp.status,
                    headers={k: v for k, v in resp.headers.items() if k.lower() not in HOP},
                )
                await out.prepare(request)
                tail, gone = b"", False
                # A client that hangs up once it has its answer (before the closing chunk)
                # still leaves the server's figures to read from the rest of the stream.
                async for chunk in resp.content.iter_any():
                    tail = (tail + chunk)[-16384:]
                    if not gone:
                        try:
                            await out.write(chunk)
                        except ConnectionResetError:
                            gone = True
                exchange.prompt_n = last_int(PROMPT_N, tail)
                exchange.cache_n = last_int(CACHE_N, tail)
                if not gone:
                    with contextlib.suppress(ConnectionResetError):
                        await out.write_eof()
                return out

        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()
        await session.close()
