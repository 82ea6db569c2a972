"""Warm start against the real llama-server (issue 12): the first request after kvproxy
starts, and the first after the upstream restarts, reuse the warmed system prompt."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.workload import document
from proxy.backends.embedded import EmbeddedServer
from proxy.config.settings import EmbeddedSettings
from tests.conftest import start_proxy, stop_proxy

pytestmark = pytest.mark.e2e

SYSTEM = {"role": "system", "content": "You are an agent.\n" + document(5, 1000)}


def ask(proxy_url: str, question: str) -> tuple[int, int, int]:
    """(predicted, cached, prompt tokens) of one request that starts with the warm prefix."""
    body = {"messages": [SYSTEM, {"role": "user", "content": question}], "max_tokens": 4,
            "temperature": 0}  # fmt: skip
    resp = httpx.post(proxy_url + "/v1/chat/completions", json=body, timeout=120)
    resp.raise_for_status()
    predicted = int(resp.headers["x-kvproxy-cache"].split(";")[0].split("=")[1])
    usage: dict[str, Any] = resp.json()["usage"]
    return predicted, usage["prompt_tokens_details"]["cached_tokens"], usage["prompt_tokens"]


def warmed(lines: list[str], reason: str) -> int:
    return sum(1 for ln in lines if '"warmed"' in ln and reason in ln)


def wait_for(predicate: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_first_requests_after_start_and_after_a_restart_are_hits(tmp_path: Path) -> None:
    warm = tmp_path / "agent.json"
    warm.write_text(json.dumps({"messages": [SYSTEM]}))
    settings = EmbeddedSettings(parallel=2, ctx_per_slot=4096, extra_args=("--cache-ram", "0"))
    llama = EmbeddedServer.start(settings, tmp_path / "llama")
    proxy = start_proxy(tmp_path / "p", "--upstream", llama.url, "--warm", str(warm))
    try:
        wait_for(lambda: warmed(proxy.log_lines(), "start") == 1)
        assert '"warm": "agent.json"' in "\n".join(proxy.log_lines())  # its record says so
        assert '"warm": "agent.json"' in "\n".join(proxy.log_lines())  # its record says so
        predicted, cached, prompt = ask(proxy.url, "First question?")
        assert predicted == cached > 1000 and prompt - cached < 40  # only the question
        port = llama.port
        llama.stop()
        llama = EmbeddedServer.start(settings, tmp_path / "llama", port)  # empty slots
        wait_for(lambda: warmed(proxy.log_lines(), "upstream lost its cache") == 1)
        predicted, cached, prompt = ask(proxy.url, "A question after the restart?")
        assert predicted == cached > 1000 and prompt - cached < 40
    finally:
        stop_proxy(proxy)
        llama.stop()


def test_a_bad_warm_file_is_a_usage_error(tmp_path: Path) -> None:
    import subprocess
    import sys

    bad = tmp_path / "bad.json"
    bad.write_text('{"messages": "no"}')
    result = subprocess.run([sys.executable, "-m", "proxy", "serve", "--upstream",
                             "http://127.0.0.1:9", "--warm", str(bad)],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2 and "not a chat body" in result.stderr
    assert "Traceback" not in result.stderr


def test_warm_auto_prefills_the_busiest_conversations_prefix(tmp_path: Path) -> None:
    """A conversation runs; kvproxy and the server restart (empty slots); with --warm auto
    the first request of a new conversation with the same system prompt is a hit."""
    settings = EmbeddedSettings(parallel=2, ctx_per_slot=4096, extra_args=("--cache-ram", "0"))
    llama = EmbeddedServer.start(settings, tmp_path / "llama")
    proxy = start_proxy(tmp_path / "p", "--upstream", llama.url)
    try:
        for question in ("One?", "Two?"):
            ask(proxy.url, question)
    finally:
        stop_proxy(proxy)
        llama.stop()
    llama = EmbeddedServer.start(settings, tmp_path / "llama2")  # a fresh server: nothing held
    proxy = start_proxy(tmp_path / "p", "--upstream", llama.url, "--warm", "auto")
    try:
        wait_for(lambda: warmed(proxy.log_lines(), "start") == 1)
        assert any('"warm_auto"' in ln and '"prefixes": 1' in ln for ln in proxy.log_lines())
        predicted, cached, prompt = ask(proxy.url, "A new conversation?")
        assert predicted == cached > 1000 and prompt - cached < 40
    finally:
        stop_proxy(proxy)
        llama.stop()
