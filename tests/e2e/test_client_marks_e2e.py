"""Issue 21, small items, against the real llama-server: a client cannot mark its request
as kvproxy's own warm-up, and a client that drops a stream is recorded as its own
disconnect (499), not as an upstream failure (502)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web

from proxy.backends.embedded import EmbeddedServer, free_port
from proxy.backends.upstream import UpstreamSpec
from proxy.config.settings import Settings
from proxy.records.read import read_records
from proxy.web.app import create_app
from proxy.web.components import METRICS
from proxy.web.warm import WARM_HEADER
from tests.conftest import Proxy

pytestmark = pytest.mark.e2e

CHAT = "/v1/chat/completions"


def record_of(proxy: Proxy, request_id: str, bound: float = 60.0) -> dict[str, Any]:
    """The request's record as logged (``request_done``); waits, as a hang guard only."""
    deadline = time.monotonic() + bound
    while True:
        for line in proxy.log_lines():
            if '"request_done"' in line and request_id in line:
                record = json.loads(line)
                if record.get("request_id") == request_id:
                    return record
        assert time.monotonic() < deadline, f"no record for {request_id}"
        time.sleep(0.1)


def test_a_client_cannot_mark_its_request_as_a_warm_up(proxy: Proxy) -> None:
    body = {"messages": [{"role": "user", "content": "Forged warm-up?"}], "max_tokens": 4}
    resp = httpx.post(proxy.url + CHAT, json=body, headers={WARM_HEADER: "agent.json"},
                      timeout=120)  # fmt: skip
    assert resp.status_code == 200
    record = record_of(proxy, resp.headers["x-kvproxy-request-id"])
    assert record["warm"] is None  # an ordinary request: it gets its tape


def test_a_dropped_stream_is_the_clients_disconnect_not_an_upstream_error(proxy: Proxy) -> None:
    body = {"messages": [{"role": "user", "content": "Write a very long story."}],
            "max_tokens": 3000, "ignore_eos": True, "stream": True}  # fmt: skip
    with httpx.stream("POST", proxy.url + CHAT, json=body, timeout=120) as resp:
        request_id = resp.headers["x-kvproxy-request-id"]
        next(resp.iter_raw())  # the stream started; then the client goes away
    record = record_of(proxy, request_id)
    assert (record["status"], record["error"]) == (499, "client disconnected")


def finished(app: web.Application) -> float:
    """Dialect requests finished (recorded) so far, from kvproxy's own metrics."""
    return sum(sample.value for metric in app[METRICS].registry.collect()
               if metric.name == "kvproxy_requests" for sample in metric.samples
               if sample.name == "kvproxy_requests_total")  # fmt: skip


async def test_a_dropped_stream_the_write_notices_is_a_499_too(
    llama: EmbeddedServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Without handler cancellation (aiohttp's default) the disconnect surfaces as a failed
    write, which passes through the upstream's response block: it was recorded as a 502.
    It is no error of kvproxy's either: the handler raised it, and aiohttp logged it as an
    "Error handling request" with a traceback."""
    caplog.set_level(logging.DEBUG, logger="aiohttp")
    settings = Settings(upstreams=(UpstreamSpec(url=llama.url, kind="llama"),),
                        data_dir=tmp_path)  # fmt: skip
    app = create_app(settings)
    runner = web.AppRunner(app, handler_cancellation=False)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        body = {"messages": [{"role": "user", "content": "Write a very long story."}],
                "max_tokens": 3000, "ignore_eos": True, "stream": True}  # fmt: skip
        async with aiohttp.ClientSession() as session:
            resp = await session.post(f"http://127.0.0.1:{port}{CHAT}", json=body)
            await resp.content.readany()
            resp.close()  # the client goes away mid-stream
        deadline = time.monotonic() + 60  # a hang guard only
        while finished(app) == 0:  # the handler notices by itself, at its next write
            assert time.monotonic() < deadline, "the dropped stream was never recorded"
            await asyncio.sleep(0.05)
    finally:
        await runner.cleanup()  # flushes the store
    (record,) = list(read_records(settings.records_dir))
    assert (record["status"], record["error"]) == (499, "client disconnected")
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
