"""A transparent logging reverse proxy in front of the real llama-server: it forwards every
request unchanged and keeps the JSON bodies it saw, so a test can read exactly what
kvproxy sent upstream. Not a fake: every answer comes from the real server."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import aiohttp
from aiohttp import web

from proxy.embedded import free_port

HOP = {"content-length", "transfer-encoding", "connection", "content-encoding"}


class LoggingUpstream:
    def __init__(self, target: str) -> None:
        self.target = target
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.bodies: list[tuple[str, Any]] = []
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

    def chats(self) -> list[dict[str, Any]]:
        """Bodies of the chat requests kvproxy sent, oldest first."""
        return [
            b for p, b in self.bodies if p.endswith("/chat/completions") and isinstance(b, dict)
        ]

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600))

        async def handle(request: web.Request) -> web.StreamResponse:
            raw = await request.read()
            if raw:
                try:
                    self.bodies.append((request.path, json.loads(raw)))
                except ValueError:
                    self.bodies.append((request.path, None))
            headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP | {"host"}}
            async with session.request(
                request.method, self.target + request.path_qs, data=raw or None, headers=headers
            ) as resp:
                out = web.StreamResponse(
                    status=resp.status,
                    headers={k: v for k, v in resp.headers.items() if k.lower() not in HOP},
                )
                await out.prepare(request)
                async for chunk in resp.content.iter_any():
                    await out.write(chunk)
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
