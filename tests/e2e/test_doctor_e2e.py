"""``kvproxy doctor`` on the real llama-server: a good flag set (the embedded server's) and
a bad one (no slot-save path, no metrics, a small context)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from proxy.backends.embedded import EmbeddedServer, bundled_model, llama_server_binary

pytestmark = pytest.mark.e2e


def doctor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", "doctor", *args],
                          capture_output=True, text=True, timeout=120)  # fmt: skip


@pytest.fixture
def bare_server() -> Iterator[str]:
    """llama-server with none of the flags kvproxy relies on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    binary = llama_server_binary()
    env = {**os.environ, "LD_LIBRARY_PATH": str(binary.parent)}
    process = subprocess.Popen(
        [str(binary), "-m", str(bundled_model()), "--host", "127.0.0.1", "--port", str(port),
         "-c", "2048", "-np", "2", "--no-slots"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_good_flag_set_needs_nothing(llama: EmbeddedServer) -> None:
    result = doctor("--upstream", llama.url, "--client-context", "4096")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "slot files on" in result.stdout and "KV cache: 22 KiB a token" in result.stdout
    assert "[FIX" not in result.stdout


def test_a_bad_flag_set_says_what_to_change(bare_server: str) -> None:
    result = doctor("--upstream", bare_server)
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "no --slot-save-path" in out and "--slot-save-path DIR" in out
    assert "/metrics is off" in out and "/slots is off" in out
    assert "smaller than the client's context window (32768)" in out


def test_an_unreachable_upstream_is_a_plain_error() -> None:
    result = doctor("--upstream", "http://127.0.0.1:9")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "kvproxy doctor: http://127.0.0.1:9" in result.stderr
