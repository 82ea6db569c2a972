"""Issue 21: memory held to its budget. A body's parsed and tokenized forms are charged to
``--max-inflight-body-bytes`` with its bytes, and a prompt that cannot fit any slot's
context is refused before it is tokenized. A fake upstream counts what reaches it; no test
measures memory."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from proxy.core.limits import MAX_TOKEN_BYTES
from tests.integration.fakes import fake_upstream, kvproxy

ANSWER = {"choices": [{"message": {"content": "ok"}}]}


async def start(tmp_path: Path, routes: dict[str, Any], props: dict[str, Any] | None = None,
                **options: Any) -> tuple[TestClient, TestServer]:  # fmt: skip
    upstream = await fake_upstream(routes, props, method="*")
    client = await kvproxy(str(upstream.make_url("")), tmp_path, server_tokens=True, **options)
    return client, upstream


async def test_a_second_body_is_refused_when_the_parsed_forms_fill_the_budget(
    tmp_path: Path,
) -> None:
    """2,000 bytes each against 10,000: their bytes fit twice, their parsed forms do not."""
    release, arrived = asyncio.Event(), asyncio.Event()

    async def held(_request: web.Request) -> web.Response:
        arrived.set()
        await release.wait()
        return web.json_response(ANSWER)

    client, upstream = await start(tmp_path, {"/v1/chat/completions": held},
                                   max_inflight_body_bytes=10_000)  # fmt: skip
    body = {"messages": [{"role": "user", "content": "x" * 1950}]}
    try:
        first = asyncio.create_task(client.post("/v1/chat/completions", json=body))
        await asyncio.wait_for(arrived.wait(), 10)
        second = await asyncio.wait_for(client.post("/v1/chat/completions", json=body), 10)
        assert second.status == 503
        assert "--max-inflight-body-bytes" in (await second.json())["error"]["message"]
        release.set()
        assert (await first).status == 200
        assert (await client.post("/v1/chat/completions", json=body)).status == 200
    finally:
        release.set()
        await client.close()
        await upstream.close()


async def test_a_prompt_that_fits_no_slot_is_refused_before_tokenizing(tmp_path: Path) -> None:
    n_ctx = 16
    calls: list[str] = []

    async def count(request: web.Request) -> web.Response:
        calls.append(request.path)
        if request.path == "/apply-template":
            return web.json_response({"prompt": "p"})
        if request.path == "/tokenize":
            return web.json_response({"tokens": [1, 2]})
        return web.json_response(ANSWER)

    props = {"total_slots": 2, "default_generation_settings": {"n_ctx": n_ctx}}
    routes = {p: count for p in ("/apply-template", "/tokenize", "/v1/chat/completions",
                                 "/api/chat")}  # fmt: skip
    client, upstream = await start(tmp_path, routes, props)
    too_long = "y" * (n_ctx * MAX_TOKEN_BYTES + 1)
    try:
        big = {"messages": [{"role": "user", "content": too_long}]}
        resp = await client.post("/v1/chat/completions", json=big)
        assert resp.status == 400
        assert "prompt exceeds the context of every slot" in (await resp.json())["error"]["message"]
        resp = await client.post("/api/chat", json={"model": "m", "stream": False, "messages": [
            {"role": "user", "content": too_long}]})  # fmt: skip
        assert resp.status == 400 and "every slot" in (await resp.json())["error"]
        assert calls == []
        # One byte less could be 16 tokens of 1,024 bytes each: never refused on length.
        fits = {"messages": [{"role": "user", "content": too_long[:-1]}]}
        resp = await client.post("/v1/chat/completions", json=fits)
        assert resp.status == 200 and "/v1/chat/completions" in calls
    finally:
        await client.close()
        await upstream.close()
