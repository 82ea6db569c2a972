"""Issue 21: after a run that kept tapes on disk, a start with ``--keep-tapes memory``
dropped them, but LMDB's freed pages still held their text. Against the real llama-server:
a conversation with a secret, then a restart in memory mode; no byte of the secret is left
in any file of the data dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.backends.embedded import EmbeddedServer
from tests.conftest import start_proxy, stop_proxy
from tests.e2e.test_isolation_e2e import SECRET, chat, session_with_secret

pytestmark = pytest.mark.e2e


def holding(data: Path) -> list[Path]:
    return [p for p in data.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]


def test_keep_tapes_memory_leaves_no_tape_text_on_disk(
    llama: EmbeddedServer, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    proxy = start_proxy(tmp_path, "--upstream", llama.url)  # tapes kept on disk
    try:
        session_with_secret(proxy)
    finally:
        stop_proxy(proxy)
    assert data / "records" / "data.mdb" in holding(data)  # the tapes hold the text
    proxy = start_proxy(tmp_path, "--upstream", llama.url, "--keep-tapes", "memory")
    try:
        chat(proxy, [{"role": "user", "content": "flush"}])
    finally:
        assert stop_proxy(proxy) == 0
    assert holding(data) == []
    assert (data / "records" / "data.mdb").stat().st_mode & 0o777 == 0o600
