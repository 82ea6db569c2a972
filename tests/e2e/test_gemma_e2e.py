"""The routing and rewrite scenarios on the second real model, Gemma 3 270M (issue 11,
point 5): an SPM vocabulary and sliding-window attention (window 512), its GGUF without a
chat template. kvproxy's prediction equals the server's reuse on every request.

Routing runs with the sdist's Gemma template (``google-gemma-2-2b-it.jinja``, whose missing
system role llama.cpp folds into the first user turn); it refuses roles that do not
alternate, which the rewrite scenarios send (two user messages in a row, as OpenClaw does),
so those run with the Gemma 3 template kvproxy serves the model with by name
(``--model gemma3-270m``: proxy/data/gemma3.jinja, system folded the same way)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.rewrite import run
from bench.workload import Conversation, play
from proxy.backends.embedded import NAMED_TEMPLATES, EmbeddedServer, gemma3_270m
from proxy.config.settings import EmbeddedSettings
from proxy.records.read import read_records
from tests.conftest import Proxy, start_proxy, stop_proxy
from tests.e2e.test_rewrite_e2e import (
    compaction_session,
    reused_previous,
    timestamp_session,
    transient_session,
    wait_for,
)
from tests.llama_sdist import models_dir

pytestmark = pytest.mark.e2e

GEMMA2_TEMPLATE = "google-gemma-2-2b-it.jinja"
# Prompts shorter than the window resume from the checkpoint taken 4 tokens before the
# previous prompt's end (slot_table.reusable), not where they diverge.
SWA_SLACK = 5


def serve(tmp: Path, template: Path) -> tuple[EmbeddedServer, Proxy]:
    settings = EmbeddedSettings(model=gemma3_270m(), parallel=2, ctx_per_slot=8192,
                                extra_args=("--cache-ram", "0",
                                            "--chat-template-file", str(template)))  # fmt: skip
    server = EmbeddedServer.start(settings, tmp / "llama")
    return server, start_proxy(tmp / "proxy", "--upstream", server.url)


@pytest.fixture(scope="module")
def routed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedServer, Proxy]]:
    template = models_dir() / "templates" / GEMMA2_TEMPLATE
    server, proxy = serve(tmp_path_factory.mktemp("gemma-routed"), template)
    yield server, proxy
    stop_proxy(proxy)
    server.stop()


@pytest.fixture(scope="module")
def rewriting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedServer, Proxy]]:
    template = NAMED_TEMPLATES["gemma3-270m"]
    server, proxy = serve(tmp_path_factory.mktemp("gemma-rewriting"), template)
    yield server, proxy
    stop_proxy(proxy)
    server.stop()


def exact_records(proxy: Proxy, count: int) -> list[dict]:
    records = wait_for(lambda: (r := list(read_records(proxy.data_dir / "records")))[count - 1:]
                       and r)  # fmt: skip
    assert len(records) == count
    wrong = [(r["predicted_cached"], r["cached_tokens"]) for r in records
             if r["predicted_cached"] != r["cached_tokens"]]  # fmt: skip
    assert not wrong, wrong
    return records


def test_interleaved_conversations_are_predicted_exactly(
    routed: tuple[EmbeddedServer, Proxy],
) -> None:
    _, proxy = routed
    # two conversations on two slots: each turn appends to what its slot holds
    calls = play(proxy.url, [Conversation.start(s, 900) for s in range(2)], turns=3)
    assert [c.predicted for c in calls] == [c.cache_n for c in calls]
    assert all(c.cache_n > 900 for c in calls if c.turn > 0)
    # four on two: each turn finds its slot taken, and resumes after the BOS only
    calls = play(proxy.url, [Conversation.start(s, 900) for s in range(10, 14)], turns=3)
    assert len(calls) == 12 and min(c.prompt_tokens for c in calls) > 900
    assert [c.predicted for c in calls] == [c.cache_n for c in calls]
    assert all(c.cache_n <= 1 for c in calls)
    records = exact_records(proxy, 18)
    assert "tokenizer_local" in "\n".join(proxy.log_lines())
    assert not any(r["restored"] for r in records)  # no slot files on sliding-window models


def test_rewrite_scenarios_are_predicted_exactly(
    rewriting: tuple[EmbeddedServer, Proxy],
) -> None:
    server, proxy = rewriting
    stamped = run(proxy.url, server.url, timestamp_session(5))
    assert [c.rewrite for c in stamped] == ["none", "volatile", "volatile"]
    assert reused_previous(stamped, SWA_SLACK)
    transient = run(proxy.url, server.url, transient_session())
    assert [c.rewrite for c in transient] == ["none", "transient", "transient"]
    assert reused_previous(transient, SWA_SLACK)
    compacted = run(proxy.url, server.url, compaction_session())
    assert [c.rewrite for c in compacted] == ["none", "none", "compaction:openclaw", "none"]
    assert reused_previous(compacted, SWA_SLACK)
    exact_records(proxy, 10)
