"""Keeping ollama's cache (its rules as tables: tests/unit/backends/test_ollama_keep.py):
kvproxy in front of a fake ollama that behaves as ollama's documentation and source say (a
runner is reloaded, its prompt cache lost, when a request asks for another num_ctx; a model
is unloaded after keep_alive). No ollama binary can be installed here (docs/ollama.md)."""

from __future__ import annotations

import json
from typing import Any

import httpx
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.backends.ollama_keep import KeepPolicy
from proxy.backends.upstream import UpstreamSpec
from proxy.config.settings import Settings
from proxy.web.app import create_app


class FakeOllama:
    """ollama's loading behaviour: one runner per model at one context; a request with
    another num_ctx reloads it (its prompt cache lost); the prompt cache reuses the common
    prefix of the previous prompt, counted in characters here."""

    def __init__(self, default_ctx: int = 4096) -> None:
        self.default_ctx = default_ctx
        self.loaded: dict[str, int] = {}  # model -> context
        self.loads = 0
        self.keep_alive: list[Any] = []
        self.last_prompt = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/version", self.version)
        app.router.add_get("/api/ps", self.ps)
        app.router.add_post("/api/chat", self.chat)
        return app

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": "0.12.0"})

    async def ps(self, request: web.Request) -> web.Response:
        return web.json_response({"models": [{"name": m, "model": m, "context_length": c}
                                             for m, c in self.loaded.items()]})  # fmt: skip

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self.chat_with(await request.json())

    async def chat_with(self, body: dict[str, Any]) -> web.Response:
        ctx = (body.get("options") or {}).get("num_ctx") or self.default_ctx
        if self.loaded.get(body["model"]) != ctx:
            self.loaded[body["model"]] = ctx
            self.loads += 1
            self.last_prompt = ""
        self.keep_alive.append(body.get("keep_alive"))
        prompt = json.dumps(body["messages"])
        shared = next((i for i, (a, b) in enumerate(zip(prompt, self.last_prompt, strict=False))
                       if a != b), min(len(prompt), len(self.last_prompt)))  # fmt: skip
        self.last_prompt = prompt
        return web.json_response({
            "model": body["model"], "created_at": "2026-11-23T00:00:00Z",
            "message": {"role": "assistant", "content": "ok"}, "done": True,
            "done_reason": "stop", "prompt_eval_count": max(1, (len(prompt) - shared) // 4),
            "eval_count": 1})  # fmt: skip


CLIENT_NUM_CTX = [4096, 262144, None, 8192]  # what OpenClaw-like clients were seen sending


async def send_all(base: str) -> list[httpx.Response]:
    out = []
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are an agent. " * 50}]
    async with httpx.AsyncClient(timeout=30) as client:
        for i, num_ctx in enumerate(CLIENT_NUM_CTX):
            messages = [*messages, {"role": "user", "content": f"turn {i}"}]
            body: dict[str, Any] = {"model": "qwen2.5:7b", "messages": messages, "stream": False}
            if num_ctx is not None:
                body["options"] = {"num_ctx": num_ctx}
            out.append(await client.post(base + "/api/chat", json=body))
            messages = [*messages, {"role": "assistant", "content": "ok"}]
    return out


async def test_clients_cannot_make_ollama_reload(tmp_path) -> None:  # type: ignore[no-untyped-def]
    direct_fake, via_fake = FakeOllama(), FakeOllama()
    async with TestServer(direct_fake.app()) as direct:
        await send_all(str(direct.make_url("")).rstrip("/"))
    assert direct_fake.loads == 4  # every change of num_ctx reloaded the model
    async with TestServer(via_fake.app()) as upstream:
        url = str(upstream.make_url("")).rstrip("/")
        proxy_app = create_app(Settings(upstreams=(UpstreamSpec.parse(url),), data_dir=tmp_path))
        async with TestServer(proxy_app) as proxy:
            answers = await send_all(str(proxy.make_url("")).rstrip("/"))
    assert [r.status_code for r in answers] == [200] * 4
    assert via_fake.loads == 1  # one context for the model: loaded once, its cache kept
    assert via_fake.keep_alive == ["30m"] * 4


async def test_a_prompt_too_long_for_the_context_is_a_400_in_ollamas_shape(tmp_path) -> None:  # type: ignore[no-untyped-def]
    fake = FakeOllama()
    async with TestServer(fake.app()) as upstream:
        url = str(upstream.make_url("")).rstrip("/")
        settings = Settings(upstreams=(UpstreamSpec.parse(url),), data_dir=tmp_path,
                            ollama_keep=KeepPolicy(num_ctx=2048))  # fmt: skip
        async with TestServer(create_app(settings)) as proxy, httpx.AsyncClient() as client:
            body = {"model": "m", "stream": False,
                    "messages": [{"role": "user", "content": "word " * 3000}]}  # fmt: skip
            resp = await client.post(str(proxy.make_url("/api/chat")), json=body)
    assert resp.status_code == 400
    assert "does not fit the model's context of 2048" in resp.json()["error"]
    assert fake.loads == 0  # never sent
