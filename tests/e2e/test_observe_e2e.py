"""`kvproxy tail --once` and `kvproxy explain --last-miss` on the log and store that real
requests through the real server produced."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from proxy.cli.dashboard import Dashboard, LogFollower, events, render
from proxy.records.read import read_records
from tests.conftest import Proxy

pytestmark = pytest.mark.e2e

SYSTEM = {"role": "system", "content": "You are terse."}


def kvproxy(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "220"}  # a wide terminal: no wrapped cells
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args], capture_output=True, text=True, timeout=60,
        env=env,
    )  # fmt: skip


def chat(proxy: Proxy, messages: list[dict]) -> str:
    body = {"messages": messages, "max_tokens": 4}
    resp = httpx.post(proxy.url + "/v1/chat/completions", json=body, timeout=60)
    assert resp.status_code == 200
    return resp.json()["choices"][0]["message"]["content"]


@pytest.fixture(scope="module")
def edited(proxy: Proxy) -> dict:
    """A conversation whose client then edits its first user message: a real miss."""
    history = [SYSTEM, {"role": "user", "content": "Explain caching in one line. " * 20}]
    reply = chat(proxy, history)
    history += [{"role": "assistant", "content": reply}, {"role": "user", "content": "More."}]
    reply = chat(proxy, history)
    history += [{"role": "assistant", "content": reply}, {"role": "user", "content": "Again."}]
    history[3] = {"role": "user", "content": "Much more, please."}
    chat(proxy, history)
    deadline = time.monotonic() + 30
    while True:
        records = list(read_records(proxy.data_dir / "records"))
        if records and records[-1].get("miss_cause") == "edited-history":
            return records[-1]
        assert time.monotonic() < deadline, "no edited-history record"
        time.sleep(0.1)


def test_explain_last_miss(proxy: Proxy, edited: dict) -> None:
    out = kvproxy("explain", "--last-miss", "--data-dir", str(proxy.data_dir))
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert f"request      {edited['request_id']}" in text
    assert "MISS: edited-history" in text and "diverged at  message 3 of 6" in text
    assert "compared to" in text and "tokens/s" in text


def test_explain_unknown_request_is_a_clear_error(proxy: Proxy) -> None:
    out = kvproxy("explain", "nope", "--data-dir", str(proxy.data_dir))
    assert out.returncode == 1 and "no nope in the records" in out.stderr


def test_tail_once_prints_a_frame(proxy: Proxy, edited: dict) -> None:
    out = kvproxy("tail", "--once", "--data-dir", str(proxy.data_dir))
    assert out.returncode == 0, out.stderr
    assert "hit rate by tokens" in out.stdout and "edited-history" in out.stdout
    assert edited["request_id"][:8] in out.stdout


def test_log_follower_survives_rotation(tmp_path: Path) -> None:
    log = tmp_path / "kvproxy.log"
    line = (
        '{"event": "request_done", "request_id": "%s", "prompt_tokens": 10, "cached_tokens": 5}\n'
    )
    log.write_text(line % "a")
    follower = LogFollower(log)
    board = Dashboard()
    for event in events(iter(follower.read())):
        board.add(event)
    log.rename(tmp_path / "kvproxy.log.1")
    log.write_text(line % "b")
    for event in events(iter(follower.read())):
        board.add(event)
    follower.close()
    assert [e["request_id"] for e in board.recent] == ["a", "b"]
    assert board.cached == 10 and render(board) is not None


def test_snippets_only_with_log_content(proxy: Proxy, llama, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import start_proxy, stop_proxy

    out = kvproxy("explain", "--data-dir", str(proxy.data_dir))
    assert "text         not logged" in out.stdout
    logging_proxy = start_proxy(tmp_path, "--upstream", llama.url, "--log-content")
    try:
        chat(logging_proxy, [SYSTEM, {"role": "user", "content": "Name a fruit, quickly."}])
        deadline = time.monotonic() + 30
        while not list(read_records(logging_proxy.data_dir / "records")):
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        stop_proxy(logging_proxy)
    out = kvproxy("explain", "--data-dir", str(logging_proxy.data_dir))
    assert "last text    'user: Name a fruit, quickly.'" in out.stdout
    assert all(r["snippets"] is None for r in read_records(proxy.data_dir / "records"))
