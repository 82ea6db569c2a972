"""Hostile and malformed input against kvproxy in front of the real llama-server: every
case is a 400 (or 401/403/415) in the client's dialect, never a 500 or a traceback, the
cache state is kvproxy's, and the proxy keeps serving (issue 10)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.backends.embedded import EmbeddedServer, free_port
from proxy.records.read import read_records
from tests.conftest import Proxy, start_proxy, stop_proxy

pytestmark = pytest.mark.e2e

CHAT = "/v1/chat/completions"


def post(proxy: Proxy, path: str, body: Any, **kw: Any) -> httpx.Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **kw.pop("headers", {})}
    return httpx.post(proxy.url + path, content=raw, headers=headers, timeout=120, **kw)


def user(content: Any, **extra: Any) -> dict[str, Any]:
    return {"role": "user", "content": content, **extra}


BAD = [
    (CHAT, {"messages": [user([{"type": "text", "text": 5}])], "max_tokens": 1}),
    (CHAT, {"messages": [user([{"type": "text", "text": None}])], "max_tokens": 1}),
    (CHAT, {"messages": [user([5])], "max_tokens": 1}),
    ("/api/chat", {"model": "m", "messages": [{"role": "assistant", "content": "",
                                               "tool_calls": 5}], "stream": False}),
    ("/api/chat", {"model": "m", "messages": [{"role": "assistant", "content": "",
                                               "tool_calls": [{"function": "abc"}]}],
                   "stream": False}),
    ("/api/chat", {"model": "m", "messages": [user("hi", images=5)], "stream": False}),
    ("/completion", {"prompt": [4294967301, 42, 43, 44], "n_predict": 1}),
    ("/completion", {"prompt": [2**40], "n_predict": 1}),
    ("/v1/completions", {"prompt": [-1], "max_tokens": 1}),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body"), BAD)
def test_malformed_bodies_are_a_400_in_the_dialect(proxy: Proxy, path: str, body: Any) -> None:
    resp = post(proxy, path, body)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert isinstance(error, str) if path.startswith("/api/") else isinstance(error, dict)


def test_deep_nesting_and_lone_surrogates_are_a_400(proxy: Proxy) -> None:
    deep = b'{"messages":' + b"[" * 5000 + b"]" * 5000 + b"}"
    assert post(proxy, CHAT, deep).status_code == 400
    surrogate = b'{"messages":[{"role":"user","content":"\\ud800"}],"max_tokens":1}'
    assert post(proxy, CHAT, surrogate).status_code == 400
    ok = post(proxy, CHAT, {"messages": [user("still there?")], "max_tokens": 2})
    assert ok.status_code == 200
    assert "Traceback" not in "\n".join(proxy.log_lines())


def test_absolute_form_targets_are_a_400(proxy: Proxy) -> None:
    port = int(proxy.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET http://example.com/slots HTTP/1.1\r\nHost: example.com\r\n\r\n")
        head = sock.recv(4096).decode(errors="replace")
    assert head.startswith("HTTP/1.1 400"), head


def test_slot_actions_are_refused_by_default(proxy: Proxy) -> None:
    for action in ("save", "restore", "erase"):
        resp = post(proxy, f"/slots/0?action={action}", {"filename": "../../x.bin"})
        assert resp.status_code == 403 and "--allow-slot-actions" in resp.text
    assert httpx.get(proxy.url + "/slots", timeout=30).status_code == 200


def test_cross_origin_requests_are_refused_and_upstream_cors_is_not_passed(proxy: Proxy) -> None:
    evil = {"Origin": "https://evil.example"}
    resp = post(proxy, CHAT, {"messages": [user("hi")], "max_tokens": 1}, headers=evil)
    assert resp.status_code == 403 and "--cors-origin" in resp.text
    plain = httpx.get(proxy.url + "/v1/models", timeout=30)
    assert plain.status_code == 200
    assert not any(k.lower().startswith("access-control-") for k in plain.headers)


@pytest.fixture(scope="module")
def guarded(llama: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    tmp = tmp_path_factory.mktemp("guarded")
    key_file = tmp / "key"
    key_file.write_text("s3cret-key\n")
    proxy = start_proxy(tmp, "--upstream", llama.url, "--api-key-file", str(key_file),
                        "--cors-origin", "https://app.example", "--idle-timeout", "2",
                        "--body-timeout", "2")  # fmt: skip
    yield proxy
    stop_proxy(proxy)


def test_api_key_is_required_when_set(guarded: Proxy) -> None:
    body = {"messages": [user("hi")], "max_tokens": 1}
    assert post(guarded, CHAT, body).status_code == 401
    assert post(guarded, CHAT, body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = post(guarded, CHAT, body, headers={"Authorization": "Bearer s3cret-key"})
    assert ok.status_code == 200
    assert httpx.get(guarded.url + "/health", timeout=10).status_code == 200


def test_allowed_origin_needs_json_and_gets_cors_headers(guarded: Proxy) -> None:
    auth = {"Authorization": "Bearer s3cret-key", "Origin": "https://app.example"}
    text = httpx.post(guarded.url + CHAT, content=b'{"messages":[]}',
                      headers={**auth, "Content-Type": "text/plain"}, timeout=30)  # fmt: skip
    assert text.status_code == 415
    ok = post(guarded, CHAT, {"messages": [user("hi")], "max_tokens": 1}, headers=auth)
    assert ok.status_code == 200
    assert ok.headers["Access-Control-Allow-Origin"] == "https://app.example"
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    pre = httpx.options(guarded.url + CHAT, headers=preflight, timeout=10)
    assert pre.status_code == 204 and "POST" in pre.headers["Access-Control-Allow-Methods"]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20,
)  # fmt: skip
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "tool"]) | JSON},
    optional={"content": JSON | st.text(max_size=20), "tool_calls": JSON, "images": JSON,
              "tool_call_id": JSON, "name": JSON},
)  # fmt: skip
BODIES = st.one_of(
    st.tuples(st.just(CHAT), st.fixed_dictionaries(
        {"messages": st.lists(MESSAGE, max_size=3) | JSON, "max_tokens": st.just(1)},
        optional={"tools": JSON, "stream": JSON, "model": JSON})),
    st.tuples(st.just("/api/chat"), st.fixed_dictionaries(
        {"messages": st.lists(MESSAGE, max_size=3) | JSON, "options": st.just({"num_predict": 1})},
        optional={"tools": JSON, "stream": JSON, "model": JSON, "format": JSON})),
    st.tuples(st.just("/api/generate"), st.fixed_dictionaries(
        {"prompt": JSON, "options": st.just({"num_predict": 1})},
        optional={"images": JSON, "stream": JSON, "model": JSON, "system": JSON})),
    st.tuples(st.sampled_from(["/completion", "/v1/completions"]), st.fixed_dictionaries(
        {"prompt": JSON | st.lists(st.integers(-(2**40), 2**40), max_size=4),
         "n_predict": st.just(1), "max_tokens": st.just(1)},
        optional={"stream": JSON, "model": JSON})),
    st.tuples(st.sampled_from([CHAT, "/api/chat", "/completion"]), JSON),
)  # fmt: skip


@settings(
    max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
)  # the same 120 bodies on every run: CI does not flake
@given(case=BODIES)
def test_fuzzed_bodies_never_get_a_500(proxy: Proxy, case: tuple[str, Any]) -> None:
    """kvproxy never fails a request itself; a well-typed request the server cannot serve
    (images for a model without a projector) gets the server's own status, passed on."""
    path, body = case
    resp = post(proxy, path, body)
    assert "kvproxy failed" not in resp.text, (resp.status_code, resp.text)
    assert (
        resp.status_code < 500
        or resp.status_code in (502, 504)
        or (resp.status_code == 500 and "image input is not supported" in resp.text)
    ), (resp.status_code, resp.text)
    if resp.status_code >= 400:
        assert "error" in resp.json()


def test_wrongly_typed_ollama_generate_images_are_a_400(proxy: Proxy) -> None:
    """Found by the fuzz: ``images: [null]`` on /api/generate reached the server (500)."""
    body = {"prompt": "", "options": {"num_predict": 1}, "images": [None]}
    resp = post(proxy, "/api/generate", body)
    assert resp.status_code == 400 and "images must be an array of strings" in resp.json()["error"]


def test_after_the_fuzz_no_traceback_and_still_serving(proxy: Proxy, tmp_path: Path) -> None:
    ok = post(proxy, CHAT, {"messages": [user("hello")], "max_tokens": 2})
    assert ok.status_code == 200
    assert not [
        line for line in proxy.log_lines() if "Traceback" in line or "internal_error" in line
    ]


def test_a_stream_closed_early_leaves_the_slot_known(tmp_path: Path, llama: EmbeddedServer) -> None:
    """Issue 10: after a client closed its stream at the first token, kvproxy took the
    slot for empty although the server held the whole prompt."""
    proxy = start_proxy(tmp_path, "--upstream", llama.url)
    try:
        long = " ".join(f"word{i}" for i in range(600))
        messages = [{"role": "system", "content": "Summarize."}, user(long)]
        body = {"messages": messages, "max_tokens": 200, "stream": True}
        with httpx.stream("POST", proxy.url + CHAT, json=body, timeout=300) as resp:
            assert resp.status_code == 200
            next(resp.iter_bytes())  # the first token: the prompt is prefilled
        time.sleep(1)
        again = post(proxy, CHAT, {"messages": [*messages, {"role": "assistant", "content": "ok"},
                                                user("and?")], "max_tokens": 1})  # fmt: skip
        cached = int(again.headers["x-kvproxy-cache"].split("cached=")[1].split(";")[0])
        assert cached > 1000
    finally:
        stop_proxy(proxy)
    records = list(read_records(proxy.data_dir / "records"))
    closed = records[0]
    assert closed["prompt_tokens"] and closed["prompt_tokens"] > 1000
    assert closed["predicted_cached"] is not None


def test_a_closed_stderr_never_fails_a_request(tmp_path: Path, llama: EmbeddedServer) -> None:
    """Issue 10: with stderr (and stdout) on a closed pipe, every request answered 500."""
    port = free_port()
    data = tmp_path / "data"
    argv = [sys.executable, "-m", "proxy", "serve", "--port", str(port), "--data-dir", str(data),
            "--upstream", llama.url]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()
    process.stderr.close()  # the reader went away before kvproxy said a word
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert process.poll() is None, "kvproxy exited"
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        for i in range(3):
            resp = httpx.post(url + CHAT, json={"messages": [user(f"hi {i}")], "max_tokens": 2},
                              timeout=120)  # fmt: skip
            assert resp.status_code == 200, resp.text
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    assert len(list(read_records(data / "records"))) == 3
    assert "request_done" in (data / "kvproxy.log").read_text()


def test_partial_headers_and_a_stalled_body_do_not_hold_a_connection(guarded: Proxy) -> None:
    port = int(guarded.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-")
        started = time.monotonic()
        assert sock.recv(4096) == b""  # closed by kvproxy, not by our timeout
        assert time.monotonic() - started < 15
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Authorization: Bearer s3cret-key\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        head = sock.recv(4096).decode(errors="replace")
        assert head.startswith("HTTP/1.1 408"), head


def test_beyond_the_inflight_limit_requests_wait_then_get_a_503(
    tmp_path: Path, llama: EmbeddedServer
) -> None:
    import concurrent.futures

    proxy = start_proxy(tmp_path, "--upstream", llama.url, "--upstream-max-inflight", "1",
                        "--queue-timeout", "0.5")  # fmt: skip
    try:
        body = {"messages": [user("Write a long story about the sea.")], "max_tokens": 150,
                "temperature": 0, "ignore_eos": True}  # fmt: skip
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            results = list(pool.map(lambda _: post(proxy, CHAT, body), range(3)))
        statuses = sorted(r.status_code for r in results)
        assert statuses[0] == 200 and 503 in statuses, statuses
        busy = next(r for r in results if r.status_code == 503)
        assert busy.headers["Retry-After"] == "5" and "in flight" in busy.json()["error"]["message"]
        ollama = post(proxy, "/api/chat", {"model": "m", "messages": [user("hi")], "stream": False,
                                            "options": {"num_predict": 1}})  # fmt: skip
        assert ollama.status_code == 200
    finally:
        stop_proxy(proxy)
    assert len(list(read_records(proxy.data_dir / "records"))) == 4
