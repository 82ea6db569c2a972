"""kvproxy killed with SIGKILL during a burst, then started again on the same data
directory (issue 10): no record committed before the kill is lost, the store opens and
serves again, and the responses that ended without a committed record (the window between
a response's end and its record's commit) are counted and printed, not timed."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from proxy.backends.embedded import EmbeddedServer
from proxy.records.read import read_records
from tests.conftest import start_proxy, stop_proxy

pytestmark = pytest.mark.e2e


def test_kill_9_during_a_burst_loses_no_record_committed_before_it(
    tmp_path: Path, llama: EmbeddedServer
) -> None:
    proxy = start_proxy(tmp_path, "--upstream", llama.url)
    done: list[tuple[str, float]] = []  # (request id, when its response ended)
    lock = threading.Lock()
    stop = threading.Event()

    def client(n: int) -> None:
        with httpx.Client(timeout=60) as http:
            i = 0
            while not stop.is_set():
                body = {"messages": [{"role": "user", "content": f"Client {n}, question {i}."}],
                        "max_tokens": 4, "temperature": 0}  # fmt: skip
                try:
                    resp = http.post(proxy.url + "/v1/chat/completions", json=body)
                    resp.read()
                except httpx.HTTPError:
                    return
                if resp.status_code == 200:
                    with lock:
                        done.append((resp.headers["x-kvproxy-request-id"], time.monotonic()))
                i += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 240
    while len(done) < 8 and time.monotonic() < deadline:
        time.sleep(0.05)
    with lock:
        answered = len(done)
    committed = {r["request_id"] for r in read_records(proxy.data_dir / "records")}
    proxy.process.send_signal(signal.SIGKILL)
    stop.set()
    proxy.process.wait(10)
    for thread in threads:
        thread.join(30)
    assert len(done) >= 8
    stored = {r["request_id"] for r in read_records(proxy.data_dir / "records")}
    assert committed <= stored  # nothing committed before the kill is lost
    assert {rid for rid, _ in done[:answered]} & committed  # records were being committed
    missing = [rid for rid, _ in done if rid not in stored]
    print(f"kill -9: {len(done)} responses, {len(missing)} without a record")
    # started again on the same directory: it opens the store and records new requests
    again = start_proxy(tmp_path / "again", "--upstream", llama.url,
                        "--data-dir", str(proxy.data_dir))  # fmt: skip
    try:
        resp = httpx.post(again.url + "/v1/chat/completions", timeout=60,
                          json={"messages": [{"role": "user", "content": "after"}],
                                "max_tokens": 2})  # fmt: skip
        assert resp.status_code == 200
    finally:
        stop_proxy(again)
    after = {r["request_id"] for r in read_records(proxy.data_dir / "records")}
    assert stored <= after and resp.headers["x-kvproxy-request-id"] in after
