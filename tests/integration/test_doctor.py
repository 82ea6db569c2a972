"""``kvproxy doctor`` against fake upstreams whose answers are malformed or slow (its
findings, one table per topic, in tests/unit/cli/test_doctor.py)."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.backends.upstream import UpstreamLimits
from proxy.cli.doctor import diagnose, gather, render, run
from proxy.core.errors import UpstreamTimeout

# --- issue 21: the upstream's answers are untrusted (a fake upstream injects the faults) ---


async def fake_server(props: Any, trickle: bool = False, ps: Any = None) -> TestServer:
    async def give_props(request: web.Request) -> web.StreamResponse:
        if not trickle:
            return web.json_response(props)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        try:
            await resp.write(b'{"total_slots": 1, "pad": "')
            for _ in range(600):  # a byte every 0.05 s for 30 s: under any idle timeout
                await resp.write(b"x")
                await asyncio.sleep(0.05)
        except (ConnectionResetError, RuntimeError):
            pass
        return resp

    async def slot_action(_request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "Invalid slot ID"}}, status=400)

    async def give_ps(_request: web.Request) -> web.Response:
        return web.json_response(ps)

    app = web.Application()
    app.router.add_get("/props", give_props)
    app.router.add_post("/slots/x", slot_action)
    app.router.add_get("/api/ps", give_ps)
    server = TestServer(app)
    await server.start_server()
    return server


MALFORMED_PROPS = [
    ["a", "list"],
    {"total_slots": "many", "default_generation_settings": {"n_ctx": "big"}},
    {"total_slots": 50_000_000, "default_generation_settings": {"n_ctx": 4096}},
    {"total_slots": 2, "default_generation_settings": [1, 2], "model_path": 7,
     "endpoint_slots": "yes"},
]  # fmt: skip


@pytest.mark.parametrize("props", MALFORMED_PROPS)
async def test_doctor_reports_malformed_props_without_a_traceback(props: Any) -> None:
    server = await fake_server(props)
    try:
        url = "llama:" + str(server.make_url("")).rstrip("/")
        facts = await gather(url, 32_768, False)
    finally:
        await server.close()
    assert 1 <= facts.slots <= 1024
    assert facts.ctx_per_slot is None or facts.ctx_per_slot == 4096
    findings = diagnose(facts)
    assert any(f.level == "warn" and "/props" in f.text for f in findings)
    render(facts, findings)


async def test_doctor_malformed_ollama_ps_is_no_traceback() -> None:
    server = await fake_server({}, ps=["not", "an", "object"])
    try:
        facts = await gather("ollama:" + str(server.make_url("")).rstrip("/"), 32_768, False)
    finally:
        await server.close()
    assert facts.loaded == []


async def test_doctor_gives_up_on_a_trickling_props() -> None:
    server = await fake_server({}, trickle=True)
    try:
        url = "llama:" + str(server.make_url("")).rstrip("/")
        bounded = gather(url, 32_768, False, limits=UpstreamLimits(json_deadline=0.5))
        with pytest.raises(UpstreamTimeout, match=r"within 0\.5 s"):
            await asyncio.wait_for(bounded, 20)
    finally:
        await server.close()


def test_doctor_run_says_what_failed_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """``run`` on an upstream that answers garbage: exit 2, one line, no traceback."""

    async def serve_and_run() -> int:
        server = await fake_server({}, trickle=True)
        try:
            args = argparse.Namespace(upstream="llama:" + str(server.make_url("")).rstrip("/"),
                                      client_context=32_768, swa_full=False,
                                      timeout=0.5)  # fmt: skip
            return await asyncio.to_thread(run, args)
        finally:
            await server.close()

    assert asyncio.run(serve_and_run()) == 2
    err = capsys.readouterr().err
    assert "did not answer within" in err and "Traceback" not in err
