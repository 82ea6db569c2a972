"""`kvproxy serve` with no --upstream starts llama-server itself and leaves no orphan."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import start_proxy, stop_proxy

pytestmark = pytest.mark.e2e


def embedded_pid(log_lines: list[str]) -> int:
    for line in log_lines:
        if '"embedded_ready"' in line:
            return int(json.loads(line)["pid"])
    raise AssertionError("no embedded_ready event in the log")


def gone(pid: int, bound: float = 30.0) -> bool:
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # A zombie is gone for our purposes: it holds no port and no memory.
        stat = Path(f"/proc/{pid}/stat")
        if stat.exists() and stat.read_text().split()[2] == "Z":
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_embedded_server_lifecycle(tmp_path: Path, sig: int) -> None:
    proxy = start_proxy(tmp_path, "--slots", "1", "--ctx-per-slot", "2048")
    pid = embedded_pid(proxy.log_lines())
    props = httpx.get(proxy.url + "/props").json()
    assert props["total_slots"] == 1
    assert props["default_generation_settings"]["n_ctx"] == 2048
    reply = httpx.post(
        proxy.url + "/v1/chat/completions",
        timeout=60,
        json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
    )
    assert reply.status_code == 200 and reply.json()["model"] == "smollm2-135m-instruct"
    assert (proxy.data_dir / "slots").is_dir()
    code = stop_proxy(proxy, sig)
    assert code == (-signal.SIGKILL if sig == signal.SIGKILL else 0)
    assert gone(pid), "llama-server outlived kvproxy"


def test_version_flag() -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "proxy", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.startswith("kvproxy ")


def test_environment_variables_configure_serve(tmp_path: Path) -> None:
    proxy = start_proxy(tmp_path, env={"KVPROXY_SLOTS": "1", "KVPROXY_CTX_PER_SLOT": "1024"})
    try:
        props = httpx.get(proxy.url + "/props").json()
        assert props["total_slots"] == 1
        assert props["default_generation_settings"]["n_ctx"] == 1024
    finally:
        stop_proxy(proxy)
