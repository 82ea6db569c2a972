"""Reuse on recurrent and hybrid models (issue 11, point 3), against the real llama-server
serving a Mamba and a Jamba model written by tests/synthetic_gguf.py: the server keeps one
recurrent state per slot, continues only a prompt that extends all the slot holds, else
resumes from a context checkpoint, and resumes a restored slot file the prompt extends.
kvproxy's prediction equals the server's reuse on every request.

The models' weights are random, so their replies are noise: each reply is one token long
(never fed back into the slot) and the conversation carries a fixed assistant answer in its
place, so that what the slot holds does not depend on how noise re-tokenizes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.workload import Conversation, chat, parse_cache_header, play
from proxy.backends.embedded import EmbeddedServer
from proxy.config.settings import EmbeddedSettings
from tests.conftest import Proxy, start_proxy, stop_proxy
from tests.e2e.test_gemma_e2e import exact_records
from tests.synthetic_gguf import write

pytestmark = pytest.mark.e2e
REPLY = "Noted."


@pytest.fixture(scope="module", params=["mamba", "jamba"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[EmbeddedServer, Proxy]]:  # fmt: skip
    tmp = tmp_path_factory.mktemp(request.param)
    model = write(request.param, tmp / f"{request.param}.gguf")
    settings = EmbeddedSettings(model=model, parallel=2, ctx_per_slot=4096,
                                extra_args=("--cache-ram", "0"))  # fmt: skip
    server = EmbeddedServer.start(settings, tmp / "llama")
    proxy = start_proxy(tmp / "proxy", "--upstream", server.url)
    yield server, proxy
    stop_proxy(proxy)
    server.stop()


def test_recurrent_reuse_is_predicted_exactly(served: tuple[EmbeddedServer, Proxy]) -> None:
    _, proxy = served
    assert any("model_attention" in line and "recurrent" in line for line in proxy.log_lines())
    # three conversations on two slots: each turn either extends its slot, or finds it
    # taken and comes back from the slot file kvproxy saved (a whole-file restore)
    convs = [Conversation.start(s, 700) for s in range(3)]
    calls = play(proxy.url, convs, turns=3, max_tokens=1, reply=REPLY)
    assert [c.predicted for c in calls] == [c.cache_n for c in calls]
    later = [c for c in calls if c.turn > 0]
    assert all(c.cache_n > 700 for c in later), [(c.turn, c.cache_n) for c in later]
    # recurrent models resume saved files
    assert any(r["restored"] for r in exact_records(proxy, len(calls)))

    # an earlier message edited: the server goes back to the checkpoint it took where that
    # user message starts, not to where the prompts diverge
    conv = Conversation.start(40, 700)
    with httpx.Client(timeout=300, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        seen = []
        for turn in range(3):
            if turn:
                conv.follow_up(turn)
            _, timings, headers, _ = chat(client, proxy.url, conv.messages, 1)
            conv.messages.append({"role": "assistant", "content": REPLY})
            seen.append((parse_cache_header(headers.get("x-kvproxy-cache"))[0],
                         timings.get("cache_n")))  # fmt: skip
        edited = [dict(m) for m in conv.messages[:-1]]
        edited[3]["content"] = edited[3]["content"].replace("keyword", "key word")
        _, timings, headers, _ = chat(client, proxy.url, edited, 1)
    predicted = parse_cache_header(headers.get("x-kvproxy-cache"))[0]
    seen.append((predicted, timings.get("cache_n")))
    assert all(p == actual for p, actual in seen), seen
    assert 700 < seen[-1][1] < seen[-2][1]  # a checkpoint before the edit, not the edit
    exact_records(proxy, len(calls) + 4)


def test_synthetic_models_are_deterministic(tmp_path: Path) -> None:
    a = write("mamba", tmp_path / "a.gguf").read_bytes()
    assert a == write("mamba", tmp_path / "b.gguf").read_bytes()
