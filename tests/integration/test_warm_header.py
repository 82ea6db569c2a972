"""Issue 21: ``x-kvproxy-warm`` is kvproxy's own header. A client that sends it is not a
warm-up, and the header (which may carry the warm token) never reaches the upstream.
The upstream here only captures what reaches it (a hostile client, not a model feature:
the record side is proven against the real llama-server in tests/e2e)."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from proxy.backends.upstream import UpstreamSpec
from proxy.config.settings import Settings
from proxy.records.read import read_records
from proxy.web.app import create_app
from proxy.web.components import WARM_TOKEN
from proxy.web.warm import WARM_HEADER

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


async def test_the_warm_header_is_checked_and_never_forwarded(tmp_path: Path) -> None:
    seen: list[dict[str, str]] = []

    async def capture(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.json_response({"choices": [{"message": {"content": "fine"}}]})

    upstream_app = web.Application()
    upstream_app.router.add_post("/v1/chat/completions", capture)
    upstream = TestServer(upstream_app)
    await upstream.start_server()
    settings = Settings(upstreams=(UpstreamSpec(url=str(upstream.make_url("")).rstrip("/"),
                                                kind="llama"),), data_dir=tmp_path)  # fmt: skip
    app = create_app(settings)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        forged = await client.post("/v1/chat/completions", json=CHAT,
                                   headers={WARM_HEADER: "agent.json"})  # fmt: skip
        mark = f"{app[WARM_TOKEN].value} agent.json"  # what kvproxy's own warmer sends
        own = await client.post("/v1/chat/completions", json=CHAT, headers={WARM_HEADER: mark})
        assert forged.status == own.status == 200
    finally:
        await client.close()
        await upstream.close()
    assert len(seen) == 2 and not any(WARM_HEADER in {k.lower() for k in h} for h in seen)
    warm = {r["request_id"]: r["warm"] for r in read_records(settings.records_dir)}
    assert warm[forged.headers["x-kvproxy-request-id"]] is None
    assert warm[own.headers["x-kvproxy-request-id"]] == "agent.json"
