"""The middleware in front of every route (issue 21): several keys, one credential per
request, and no host name an attacker's DNS could rebind to this address."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from proxy.cli import main as cli
from proxy.config.exposure import Exposure
from proxy.web import security


async def client_for(exposure: Exposure) -> TestClient:
    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application(middlewares=[security.middleware(exposure)])
    app.router.add_route("*", "/{tail:.*}", ok)
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


async def test_a_rebound_host_name_reads_nothing() -> None:
    client = await client_for(Exposure())
    try:
        resp = await client.get("/slots", headers={"Host": "evil.example:11435"})
        assert resp.status == 421
        assert "--allowed-host" in (await resp.json())["error"]["message"]
        assert (await client.get("/slots")).status == 200
    finally:
        await client.close()


async def test_each_key_of_the_file_is_accepted_and_no_other(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# team keys\nkey-alice\n\nkey-bob\n")
    args = cli.build_parser({}).parse_args(["serve", "--api-key-file", str(keys)])
    exposure = cli.configured(args, {})[1].exposure
    assert exposure.api_keys == frozenset({"key-alice", "key-bob"})
    client = await client_for(exposure)
    try:
        for key, status in (("key-alice", 200), ("key-bob", 200), ("key-eve", 401)):
            resp = await client.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
            assert resp.status == status
    finally:
        await client.close()


async def test_a_credential_sent_twice_is_refused() -> None:
    client = await client_for(Exposure(api_keys=frozenset({"k"})))
    try:
        headers = [("Authorization", "Bearer k"), ("Authorization", "Bearer other")]
        resp = await client.get("/v1/models", headers=headers)
        assert resp.status == 400
    finally:
        await client.close()


def test_api_keys_parse() -> None:
    assert cli.api_keys("a\n  b  \n#c\n\n") == frozenset({"a", "b"})
