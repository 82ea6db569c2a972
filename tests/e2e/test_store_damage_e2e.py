"""Issue 21: `kvproxy serve --warm auto` on a damaged record store (truncated, or one page
overwritten) crashed with SIGBUS or aborted at every start. Now it starts, against the real
llama-server, on a fresh store, and keeps the damaged one beside it."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from proxy.backends.embedded import EmbeddedServer
from tests.conftest import start_proxy, stop_proxy
from tests.unit.records.test_damage import DAMAGE, populate

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_serve_with_warm_auto_starts_on_a_damaged_store(
    llama: EmbeddedServer, tmp_path: Path, damage: str
) -> None:
    data = tmp_path / "p" / "data"
    populate(data / "records")
    DAMAGE[damage](data / "records")
    proxy = start_proxy(tmp_path / "p", "--upstream", llama.url, "--warm", "auto")
    try:
        body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
        resp = httpx.post(proxy.url + "/v1/chat/completions", json=body, timeout=120)
        assert resp.status_code == 200
        assert any("record_store_damaged" in ln for ln in proxy.log_lines())
    finally:
        assert stop_proxy(proxy) == 0
    kept = sorted(data.glob("records.damaged-*"))
    assert len(kept) == 1 and (kept[0] / "data.mdb").exists()
    assert (data / "records" / "data.mdb").exists()
