"""kvproxy in front of ollama: paths pass through, the kind is auto-detected.

No ollama binary can be installed here, so the upstream answers with bodies shaped exactly as
ollama's API documentation (docs/api.md) gives them; see docs/ollama.md.
"""

from __future__ import annotations

import json

import httpx
import ollama
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.backends.upstream import UpstreamSpec
from proxy.config.settings import Settings
from proxy.records.read import read_records
from proxy.web.app import create_app
from proxy.web.components import STORE

DOC_CHAT_STREAM = [
    {
        "model": "llama3.2",
        "created_at": "2023-08-04T08:52:19.385406455-07:00",
        "message": {"role": "assistant", "content": "The"},
        "done": False,
    },
    {
        "model": "llama3.2",
        "created_at": "2023-08-04T19:22:45.499127Z",
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": "stop",
        "total_duration": 4883583458,
        "load_duration": 1334875,
        "prompt_eval_count": 26,
        "prompt_eval_duration": 342546000,
        "eval_count": 282,
        "eval_duration": 4535599000,
    },
]
DOC_TAGS = {"models": [{"name": "deepseek-r1:latest", "model": "deepseek-r1:latest",
                        "modified_at": "2025-05-10T08:06:48.639712648-07:00", "size": 4683075271,
                        "digest": "0a8c26691023", "details": {"parent_model": "", "format": "gguf",
                        "family": "qwen2", "families": ["qwen2"], "parameter_size": "7.6B",
                        "quantization_level": "Q4_K_M"}}]}  # fmt: skip


def fake_ollama() -> tuple[web.Application, list[dict]]:
    seen: list[dict] = []

    async def chat(request: web.Request) -> web.StreamResponse:
        seen.append(await request.json())
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        for obj in DOC_CHAT_STREAM:
            await resp.write(json.dumps(obj).encode() + b"\n")
        return resp

    async def tags(request: web.Request) -> web.Response:
        return web.json_response(DOC_TAGS)

    async def version(request: web.Request) -> web.Response:
        return web.json_response({"version": "0.5.1"})

    app = web.Application()
    app.router.add_post("/api/chat", chat)
    app.router.add_get("/api/tags", tags)
    app.router.add_get("/api/version", version)
    return app, seen


async def test_ollama_upstream_is_detected_and_passed_through(tmp_path) -> None:
    app, seen = fake_ollama()
    async with TestServer(app) as upstream:
        url = str(upstream.make_url("")).rstrip("/")
        proxy_app = create_app(Settings(upstreams=(UpstreamSpec.parse(url),), data_dir=tmp_path))
        async with TestServer(proxy_app) as proxy:
            client = ollama.AsyncClient(host=str(proxy.make_url("")).rstrip("/"))
            parts = [
                p
                async for p in await client.chat(
                    model="llama3.2",
                    messages=[{"role": "user", "content": "why?"}],
                    stream=True,
                    options={"num_ctx": 4096, "temperature": 0},
                    keep_alive="5m",
                )
            ]
            assert [p.message.content for p in parts] == ["The", ""]
            assert parts[-1].done and parts[-1].prompt_eval_count == 26
            # ollama-only fields reach ollama; keep_alive at least --ollama-keep-alive (30m),
            # and the first num_ctx seen for a model stays that model's (ollama_keep.py)
            assert seen[0]["options"] == {"num_ctx": 4096, "temperature": 0}
            assert seen[0]["keep_alive"] == "30m"
            listed = await client.list()
            assert listed.models[0].model == "deepseek-r1:latest"
            async with httpx.AsyncClient() as raw:
                version = await raw.get(str(proxy.make_url("/api/version")))
            assert version.json() == {"version": "0.5.1"}
            await proxy_app[STORE].flush()
            (record,) = [
                r for r in read_records(tmp_path / "records") if r["dialect"] == "ollama_chat"
            ]
            # ollama: one slot per instance, estimated tokens, counters from prompt_eval_count
            assert record["slot"] == "0/0" and record["estimated"] is True
            assert record["prompt_tokens"] == 26 and record["prefilled_tokens"] == 26
            assert record["cached_tokens"] == 0 and record["decode_tokens"] == 282
            assert record["ollama_replaced"] == {"keep_alive": "5m"}
