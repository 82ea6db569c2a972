"""SIGTERM with streams in flight, against the real llama-server (issue 21): kvproxy stops
accepting, refuses what waits in its queue (503 in the dialect, Retry-After), lets the
streams finish within --shutdown-grace or cuts them with an error frame, records every
request, and exits. Wall-clock bounds here are hang guards only."""

from __future__ import annotations

import json
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.backends.embedded import EmbeddedServer
from proxy.records.read import read_records
from tests.conftest import Proxy, start_proxy

pytestmark = pytest.mark.e2e

CHAT = "/v1/chat/completions"
GRACE = 4.0
HANG_GUARD = 120.0  # far above grace + cut; only so that a hang fails instead of stalling


@dataclass
class Outcome:
    """What one client saw."""

    started: threading.Event = field(default_factory=threading.Event)
    status: int | None = None
    request_id: str | None = None
    retry_after: str | None = None
    body: bytes = b""
    error: str | None = None  # a transport error: the stream was cut without an ending


def run(proxy: Proxy, body: dict[str, Any], out: Outcome) -> None:
    try:
        with httpx.stream("POST", proxy.url + CHAT, json=body, timeout=HANG_GUARD) as resp:
            out.status = resp.status_code
            out.request_id = resp.headers.get("x-kvproxy-request-id")
            out.retry_after = resp.headers.get("retry-after")
            for chunk in resp.iter_raw():
                out.body += chunk
                out.started.set()
    except httpx.HTTPError as exc:
        out.error = repr(exc)
    finally:
        out.started.set()


def inflight(proxy: Proxy) -> float:
    for line in httpx.get(proxy.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("kvproxy_requests_inflight "):
            return float(line.split()[-1])
    raise AssertionError("no kvproxy_requests_inflight in /metrics")


def wait_until(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + HANG_GUARD
    while not predicate():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)


def stream_body(max_tokens: int) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": "Tell a long story about a lighthouse."}],
            "max_tokens": max_tokens, "ignore_eos": True, "stream": True}  # fmt: skip


def test_sigterm_drains_refuses_the_queue_and_records_every_request(
    llama: EmbeddedServer, tmp_path: Path
) -> None:
    # One upstream place per slot: with both slots streaming, later requests queue in kvproxy.
    proxy = start_proxy(tmp_path, "--upstream", llama.url, "--shutdown-grace", str(GRACE),
                        "--upstream-max-inflight", "2")  # fmt: skip
    outcomes = {"long": Outcome(), "short": Outcome(), "queued-1": Outcome(),
                "queued-2": Outcome()}  # fmt: skip
    bodies = {"long": stream_body(4000), "short": stream_body(48),
              "queued-1": {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
              "queued-2": stream_body(8)}  # fmt: skip
    threads = {n: threading.Thread(target=run, args=(proxy, bodies[n], o), daemon=True)
               for n, o in outcomes.items()}  # fmt: skip
    try:
        for name in ("long", "short"):
            threads[name].start()
        for name in ("long", "short"):
            assert outcomes[name].started.wait(HANG_GUARD)
        for name in ("queued-1", "queued-2"):
            threads[name].start()
        wait_until(lambda: inflight(proxy) + sum(not t.is_alive() for t in threads.values())
                   >= 4, "all four requests reached kvproxy")  # fmt: skip
        proxy.process.send_signal(signal.SIGTERM)
        wait_until(lambda: any('"shutting_down"' in ln for ln in proxy.log_lines()),
                   "kvproxy began its shutdown")  # fmt: skip
        late = after_sigterm(proxy)
        assert proxy.process.wait(HANG_GUARD) == 0  # it exits, and cleanly
        for thread in threads.values():
            thread.join(HANG_GUARD)
    finally:
        if proxy.process.poll() is None:
            proxy.process.kill()
            proxy.process.wait()
    log = proxy.log_lines()
    drained = [json.loads(ln) for ln in log if '"drained"' in ln]
    assert drained and drained[0]["inflight"] == 0
    records = {r["request_id"]: r for r in read_records(proxy.data_dir / "records")}
    for name, out in outcomes.items():
        assert out.error is None, f"{name}: cut without an ending: {out.error}"
        assert out.request_id in records, f"{name}: no record"
        record = records[out.request_id]
        if out.status == 503:  # refused before it started: the dialect's error shape
            error = json.loads(out.body)["error"]
            assert error["type"] == "shutting_down" and out.retry_after
            assert record["status"] == 503
        else:  # started: it finished, or the grace ran out and it ended with an error frame
            assert out.status == 200
            events = [ln[6:] for ln in out.body.decode().splitlines() if ln.startswith("data: ")]
            if events[-1] == "[DONE]":
                assert record["status"] == 200 and record["error"] is None, record
            else:
                assert "error" in json.loads(events[-1]), events[-1]
                assert record["status"] == 503 and "--shutdown-grace" in record["error"]
    assert late in ("refused", 503)


def after_sigterm(proxy: Proxy) -> str | int:
    """A new request once the shutdown began: its connection is refused, or it is a 503."""
    try:
        resp = httpx.post(proxy.url + CHAT, json={"messages": [{"role": "user", "content": "x"}]},
                          timeout=HANG_GUARD)  # fmt: skip
    except httpx.ConnectError:
        return "refused"
    except httpx.HTTPError:
        return "refused"  # accepted by the closing socket, then dropped unanswered
    return resp.status_code
