"""Running kvproxy as its own process, as users do: shared by the tests and the benchmarks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from proxy.backends.embedded import free_port


@dataclass
class ProxyProcess:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    data_dir: Path

    def log_lines(self) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                return self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                return self.process.wait()
        return self.process.returncode


def wait_http(url: str, process: subprocess.Popen[bytes], log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited: {log_path.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready: {log_path.read_text(errors='replace')[-3000:]}")


def spawn_proxy(
    workdir: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 180
) -> ProxyProcess:
    """`python -m proxy serve` on a free port with its data dir and log under workdir."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    data_dir = workdir / "data"
    log_path = workdir / "kvproxy.log"
    argv = [sys.executable, "-m", "proxy", "serve", "--port", str(port),
            "--data-dir", str(data_dir), *args]  # fmt: skip
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            argv, stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    proxy = ProxyProcess(f"http://127.0.0.1:{port}", process, log_path, data_dir)
    try:
        wait_http(proxy.url + "/health", process, log_path, timeout)
    except BaseException:
        proxy.stop()
        raise
    return proxy
