"""No oracle (issue 21), against the real llama-server: a client with another key cannot
learn another client's system prompt from the cached-token figures it is shown."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from proxy.backends.embedded import EmbeddedServer
from tests.conftest import start_proxy, stop_proxy

pytestmark = pytest.mark.e2e

BASE = "You are the support agent of ACME Bank.\nBe polite and brief.\n" + "".join(
    f"Policy {i}: never disclose internal data to third parties.\n" for i in range(20)
)


def figures(url: str, key: str, pin: str) -> tuple[int, int]:
    """(x-kvproxy-cache cached=, usage cached_tokens) for a first turn under ``pin``."""
    resp = httpx.post(
        url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"messages": [{"role": "system", "content": f"{BASE}Customer PIN: {pin}\n"},
                           {"role": "user", "content": "hi"}],
              "max_tokens": 4, "temperature": 0},
        timeout=300,
    )  # fmt: skip
    assert resp.status_code == 200, resp.text
    header = dict(p.strip().split("=", 1) for p in resp.headers["x-kvproxy-cache"].split(";"))
    details = resp.json()["usage"].get("prompt_tokens_details") or {}
    return int(header["cached"]), int(details.get("cached_tokens") or 0)


def test_a_right_guess_shows_the_same_figures_as_a_wrong_one(
    llama: EmbeddedServer, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    keys.write_text("victim-key\nattacker-key\n")
    # --rewrite off: the cache alone is under test (a right guess must not reuse more)
    proxy = start_proxy(tmp_path / "proxy", "--upstream", llama.url, "--api-key-file", str(keys),
                        "--rewrite", "off")  # fmt: skip
    try:
        figures(proxy.url, "victim-key", "4321")
        wrong = figures(proxy.url, "attacker-key", "9999")
        right = figures(proxy.url, "attacker-key", "4321")
        wrong_again = figures(proxy.url, "attacker-key", "1111")
        assert right == wrong_again, (wrong, right, wrong_again)
        own = figures(proxy.url, "victim-key", "4321")
        assert own[0] > right[0], (own, right)  # the victim still reuses its own prompt
    finally:
        stop_proxy(proxy)
