"""``kvproxy doctor``'s findings, one table per topic (``diagnose`` is pure)."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.backends.upstream import UpstreamLimits
from proxy.cli.doctor import GIB, Facts, Finding, ModelShape, diagnose, gather, render, run
from proxy.core.errors import UpstreamTimeout

QWEN_14B = ModelShape("qwen2", layers=48, kv_heads=8, key_dim=128, value_dim=128,
                      file_bytes=int(8.4 * GIB))  # fmt: skip
SMOLLM = ModelShape("llama", layers=30, kv_heads=3, key_dim=64, value_dim=64,
                    file_bytes=100 * 1024**2)  # fmt: skip
GEMMA3 = ModelShape("gemma3", 18, 1, 256, 256, window=512, file_bytes=240 * 1024**2)


def levels(findings: list[Finding], word: str) -> list[str]:
    return [f.level for f in findings if word in f.text]


def llama(**kw: object) -> Facts:
    base = dict(url="http://x", kind="llama", slots=2, ctx_per_slot=32_768, slot_actions=True,
                endpoint_slots=True, endpoint_metrics=True, model_path="/m.gguf",
                model_readable=True, shape=SMOLLM, ram_bytes=24 * GIB)  # fmt: skip
    base.update(kw)
    return Facts(**base)  # type: ignore[arg-type]


def test_kv_bytes_per_token() -> None:
    assert QWEN_14B.kv_bytes_per_token == 196_608  # 192 KiB a token, f16 K and V
    assert SMOLLM.kv_bytes_per_token == 23_040


@pytest.mark.parametrize(
    ("facts", "word", "expect"),
    [
        (llama(), "slot files", ["ok"]),
        (llama(slot_actions=False), "slot files", ["fix"]),
        (llama(endpoint_slots=False), "/slots", ["warn"]),
        (llama(endpoint_metrics=False), "/metrics", ["warn"]),
        (llama(ctx_per_slot=8192), "slot(s) of", ["fix"]),  # under the client's 32k
        (llama(ctx_per_slot=8192, client_context=8192), "slot(s) of", ["ok"]),
        (llama(model_readable=False), "not readable", ["warn"]),
        # the seeds' cliff: 14B at 32k on 24 GB (6 GiB of KV + 8.4 GiB of weights per slot)
        (llama(shape=QWEN_14B, slots=2), "KV cache", ["fix"]),
        (llama(shape=QWEN_14B, slots=1), "KV cache", ["ok"]),
        (llama(shape=QWEN_14B, slots=1, ram_bytes=16 * GIB), "KV cache", ["fix"]),
        (llama(shape=GEMMA3), "sliding-window", ["warn"]),
        (llama(shape=GEMMA3, swa_full=True), "--swa-full", ["ok"]),
    ],
)
def test_llama_server_findings(facts: Facts, word: str, expect: list[str]) -> None:
    assert levels(diagnose(facts), word) == expect


@pytest.mark.parametrize(
    ("loaded", "keep_alive", "word", "expect"),
    [
        ([], None, "no model is loaded", ["warn"]),
        ([{"name": "qwen2.5:7b", "context_length": 4096}], None, "qwen2.5:7b", ["fix"]),
        ([{"name": "qwen2.5:7b", "context_length": 32768}], None, "qwen2.5:7b", ["ok"]),
        ([{"name": "m"}], 300, "keep_alive", ["warn"]),
        ([{"name": "m"}], 1800, "keep_alive", []),
    ],
)
def test_ollama_findings(loaded: list, keep_alive: int | None, word: str,
                         expect: list[str]) -> None:  # fmt: skip
    facts = Facts(url="http://o", kind="ollama", loaded=loaded, keep_alive_s=keep_alive)
    assert levels(diagnose(facts), word) == expect


@pytest.mark.parametrize(
    ("expires_at", "expect"),
    [("2026-11-23T10:05:00.123456789+00:00", ["warn"]),  # 5 minutes left
     ("2026-11-23T11:00:00Z", []), ("soon", []), (None, [])],
)  # fmt: skip
def test_ollama_unloading_soon(expires_at: str | None, expect: list[str]) -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 11, 23, 10, 0, tzinfo=UTC).timestamp()
    facts = Facts(url="http://o", kind="ollama", now=now,
                  loaded=[{"name": "m", "expires_at": expires_at}])  # fmt: skip
    assert levels(diagnose(facts), "unloads in") == expect


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
