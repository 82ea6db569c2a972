"""Streams relay chunk by chunk; a client that leaves stops the server's generation;
bad input gets a dialect-shaped error and the proxy keeps serving."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from proxy.backends.embedded import EmbeddedServer
from tests.conftest import Proxy

pytestmark = pytest.mark.e2e

LONG = {
    "messages": [{"role": "user", "content": "Write a very long story about a lighthouse."}],
    "max_tokens": 3000,
    "ignore_eos": True,
    "stream": True,
}


def busy_slots(llama: EmbeddedServer) -> int:
    slots = httpx.get(llama.url + "/slots", timeout=10).json()
    return sum(1 for s in slots if s["is_processing"])


def wait_idle(llama: EmbeddedServer, bound: float = 30.0) -> bool:
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if busy_slots(llama) == 0:
            return True
        time.sleep(0.1)
    return False


def test_first_chunk_arrives_while_the_server_is_still_generating(
    proxy: Proxy, llama: EmbeddedServer
) -> None:
    assert wait_idle(llama)
    body = {**LONG, "max_tokens": 400}
    with httpx.stream("POST", proxy.url + "/v1/chat/completions", json=body, timeout=120) as resp:
        lines = resp.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        # The server has not finished: the proxy did not buffer the response.
        assert busy_slots(llama) == 1
        assert json.loads(first[6:])["object"] == "chat.completion.chunk"
        rest = [line for line in lines if line.startswith("data: ")]
    assert rest[-1] == "data: [DONE]" and len(rest) > 100


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", LONG),
        (
            "/completion",
            {"prompt": "Once upon a time", "n_predict": 3000, "ignore_eos": True, "stream": True},
        ),
        (
            "/api/chat",
            {
                "model": "m",
                "messages": LONG["messages"],
                "options": {"num_predict": 3000},
                "ignore_eos": True,
            },
        ),
    ],
)
def test_client_disconnect_cancels_generation(
    proxy: Proxy, llama: EmbeddedServer, path: str, body: dict
) -> None:
    assert wait_idle(llama)
    before = predicted_total(llama)
    with httpx.stream("POST", proxy.url + path, json=body, timeout=120) as resp:
        chunks = resp.iter_raw()
        next(chunks)
        assert busy_slots(llama) == 1
    # Closed after one chunk: the slot must go idle long before 3000 tokens are decoded.
    assert wait_idle(llama)
    assert predicted_total(llama) - before < 3000


def predicted_total(llama: EmbeddedServer) -> float:
    for line in httpx.get(llama.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("llamacpp:tokens_predicted_total"):
            return float(line.split()[-1])
    raise AssertionError("llama-server /metrics has no tokens_predicted_total")


OPENAI_ERR = "openai"
OLLAMA_ERR = "ollama"


@pytest.mark.parametrize(
    ("path", "content", "ctype", "status", "shape", "says"),
    [
        (
            "/v1/chat/completions",
            b"{not json",
            "application/json",
            400,
            OPENAI_ERR,
            "not valid JSON",
        ),
        ("/v1/chat/completions", b'{"model":"m"}', "application/json", 400, OPENAI_ERR, "messages"),
        (
            "/v1/chat/completions",
            b'{"messages":[]}',
            "application/xml",
            415,
            OPENAI_ERR,
            "content type",
        ),
        ("/v1/chat/completions", b"", "application/json", 400, OPENAI_ERR, "empty"),
        ("/v1/completions", b'{"model":"m"}', "application/json", 400, OPENAI_ERR, "prompt"),
        ("/completion", b"[1,2]", "application/json", 400, OPENAI_ERR, "JSON object"),
        ("/api/chat", b"{oops", "application/json", 400, OLLAMA_ERR, "not valid JSON"),
        ("/api/chat", b'{"model":"m"}', "application/json", 400, OLLAMA_ERR, "messages"),
        ("/api/generate", b'{"model":"m"}', "application/json", 400, OLLAMA_ERR, "prompt"),
        (
            "/api/generate",
            b"{}",
            "multipart/form-data; boundary=x",
            415,
            OLLAMA_ERR,
            "content type",
        ),
    ],
)
def test_bad_input_gets_a_dialect_shaped_error(
    proxy: Proxy, path: str, content: bytes, ctype: str, status: int, shape: str, says: str
) -> None:
    resp = httpx.post(proxy.url + path, content=content, headers={"content-type": ctype})
    assert resp.status_code == status
    error = resp.json()["error"]
    if shape == OPENAI_ERR:
        assert says in error["message"] and error["type"] == "invalid_request_error"
    else:
        assert isinstance(error, str) and says in error
    assert "Traceback" not in resp.text
    assert httpx.get(proxy.url + "/health").status_code == 200


@pytest.mark.parametrize(
    ("path", "shape"), [("/v1/chat/completions", OPENAI_ERR), ("/api/chat", OLLAMA_ERR)]
)
def test_body_over_the_limit_is_413(proxy: Proxy, path: str, shape: str) -> None:
    big = json.dumps({"messages": [{"role": "user", "content": "x" * (2 * 1024 * 1024)}]})
    resp = httpx.post(proxy.url + path, content=big, headers={"content-type": "application/json"})
    assert resp.status_code == 413
    error = resp.json()["error"]
    assert "limit" in (error["message"] if shape == OPENAI_ERR else error)


def test_rejections_are_logged(proxy: Proxy) -> None:
    httpx.post(
        proxy.url + "/v1/chat/completions",
        content=b"{bad",
        headers={"content-type": "application/json"},
    )
    rejected = [json.loads(x) for x in proxy.log_lines() if '"request_rejected"' in x]
    assert rejected and rejected[-1]["status"] == 400
