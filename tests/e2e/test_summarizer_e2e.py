"""The opt-in summarizer rule against the real llama-server: a summarizer call over the
conversation a slot holds reuses that slot, where sent as the client sends it it is prefilled
whole."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from bench.rewrite import run
from bench.scenarios import Scenario
from bench.workload import document
from proxy.backends.embedded import EmbeddedServer
from proxy.core.conversation import Message
from tests.conftest import Proxy, start_proxy, stop_proxy
from tests.unit.rewrite.test_summarizer import (
    HERMES_HEAD,
    HERMES_REST,
    OC_PROMPT,
    OC_SYSTEM,
    hermes_transcript,
    openclaw_transcript,
)

pytestmark = pytest.mark.e2e

RULES = "You are an agent.\n" + document(7, 250) + "\n"


@pytest.fixture(scope="module")
def summarizing(llama: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[Proxy]:  # fmt: skip
    proxy = start_proxy(tmp_path_factory.mktemp("summarizing"), "--upstream", llama.url,
                        "--rewrite", "all,summarizer")  # fmt: skip
    yield proxy
    stop_proxy(proxy)


def summarized_session(hermes: bool) -> Scenario:
    """Two turns, then the client's summarizer call over them (and the last reply)."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": RULES}]
    for turn in range(2):
        messages.append({"role": "user", "content": f"Question {turn}: {document(80 + turn, 20)}"})
        reply = yield {"messages": [dict(m) for m in messages]}
        messages.append({"role": "assistant", "content": reply})
    turns = [Message.make(m["role"], m["content"]) for m in messages[1:]]
    if hermes:
        text = HERMES_HEAD + hermes_transcript(turns) + HERMES_REST
        yield {"messages": [{"role": "user", "content": text}]}
    else:
        transcript = openclaw_transcript(turns, None)
        text = f"<conversation>\n{transcript}\n</conversation>\n\n{OC_PROMPT}"
        parts = [{"type": "text", "text": text}]
        yield {"messages": [{"role": "system", "content": OC_SYSTEM},
                            {"role": "user", "content": parts}]}  # fmt: skip


@pytest.mark.parametrize("hermes", [False, True], ids=["openclaw", "hermes"])
def test_summarizer_call_reuses_the_conversation_s_slot(
    summarizing: Proxy, llama: EmbeddedServer, hermes: bool
) -> None:
    direct = run(llama.url, llama.url, summarized_session(hermes))
    calls = run(summarizing.url, llama.url, summarized_session(hermes))
    second, summary = calls[1], calls[2]
    assert summary.rewrite == ("summarizer:hermes" if hermes else "summarizer:openclaw")
    # everything the slot held for the second turn (its prompt and reply) is reused
    assert summary.cache_n >= second.cache_n + second.prompt_n - 1
    # the control: sent as the client sends it, the transcript is prefilled whole
    assert direct[2].cache_n < 40 and 2 * summary.prompt_n < direct[2].prompt_n
