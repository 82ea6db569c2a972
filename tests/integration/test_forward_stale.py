"""Issue 19.6: a POST kvproxy forwards without parsing it may run on one of the server's
slots; the slot view is marked stale so the next request re-reads /slots first."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web

from proxy.web.components import SLOTS
from tests.integration.fakes import fake_upstream, kvproxy

PROPS = {"total_slots": 2, "default_generation_settings": {"n_ctx": 4096}}


async def answer(_request: web.Request) -> web.Response:
    return web.json_response({"content": "x"})


# (client slot actions are refused outright: tests/integration/test_security.py)
@pytest.mark.parametrize(
    ("path", "stale"),
    [("/infill", True), ("/v1/embeddings", True), ("/tokenize", False), ("/apply-template", False)],
)
async def test_a_forwarded_generating_post_marks_the_slots_stale(
    tmp_path: Path, path: str, stale: bool
) -> None:
    upstream = await fake_upstream({path.split("?")[0]: answer}, props=PROPS)
    client = await kvproxy(str(upstream.make_url("/")), tmp_path)
    try:
        (server,) = client.app[SLOTS].servers
        server.stale = False
        resp = await client.post(path, json={"input_prefix": "def f(", "content": "x"})
        assert resp.status == 200
        assert server.stale is stale
    finally:
        await client.close()
        await upstream.close()
