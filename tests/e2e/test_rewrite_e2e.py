"""Rewrite rules against the real llama-server: after the first turn, every turn reuses
what the slot already holds, although the client changed the top of its prompt."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.rewrite import CallResult, Session, run
from bench.scenarios import OPENCLAW_MARKER, Scenario
from bench.workload import document
from proxy.backends.embedded import EmbeddedServer
from proxy.records.read import read_records
from tests.conftest import Proxy, start_proxy, stop_proxy

pytestmark = pytest.mark.e2e

RULES = "You are an agent.\n" + document(42, 250) + "\n"


@pytest.fixture(scope="module")
def rewriting(llama: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    proxy = start_proxy(tmp_path_factory.mktemp("rewriting"), "--upstream", llama.url)
    yield proxy
    stop_proxy(proxy)


def ask(turn: int) -> dict[str, Any]:
    return {"role": "user", "content": f"Question {turn}: {document(60 + turn, 12)}"}


def timestamp_session(seed: int, turns: int = 3) -> Scenario:
    messages: list[dict[str, Any]] = []
    for turn in range(turns):
        system = {"role": "system", "content": f"Now: 2026-11-22 0{seed}:{turn:02d}\n{RULES}"}
        messages = [system, *messages[1:], ask(turn)]
        reply = yield {"messages": [dict(m) for m in messages]}
        messages.append({"role": "assistant", "content": reply})


def reused_previous(calls: list[CallResult], slack: int = 1) -> bool:
    """Each later call reused at least everything the previous call prefilled before (but
    ``slack`` tokens)."""
    return all(
        later.cache_n >= earlier.cache_n + earlier.prompt_n - slack
        for earlier, later in itertools.pairwise(calls)
    )


def test_timestamp_in_system_is_moved_to_the_newest_turn(
    rewriting: Proxy, llama: EmbeddedServer
) -> None:
    calls = run(rewriting.url, llama.url, timestamp_session(1))
    assert [c.rewrite for c in calls] == ["none", "volatile", "volatile"]
    assert reused_previous(calls)


def test_direct_the_same_session_misses(llama: EmbeddedServer) -> None:
    """The control: without kvproxy the changed system line costs the whole prompt."""
    calls = run(llama.url, llama.url, timestamp_session(2))
    assert not reused_previous(calls)
    assert all(c.cache_n < 40 for c in calls[1:])


def transient_session(turns: int = 3) -> Scenario:
    messages: list[dict[str, Any]] = [{"role": "system", "content": RULES}]
    for turn in range(turns):
        messages.append(ask(turn))
        internal = {"role": "user", "content": [
            {"type": "text", "text": f"<<<BEGIN_OPENCLAW_INTERNAL_CONTEXT>>> sessions: {turn}"}
        ]}  # fmt: skip
        reply = yield {"messages": [*messages, internal], "max_tokens": 24}
        messages.append({"role": "assistant", "content": reply})


def test_transient_trailing_context_keeps_the_prefix(
    rewriting: Proxy, llama: EmbeddedServer
) -> None:
    calls = run(rewriting.url, llama.url, transient_session())
    assert [c.rewrite for c in calls] == ["none", "transient", "transient"]
    assert reused_previous(calls)


def compaction_session() -> Scenario:
    system = {"role": "system", "content": "You are a coding agent."}
    messages: list[dict[str, Any]] = [system, {"role": "user", "content": RULES}]
    reply = yield {"messages": list(messages)}
    messages += [{"role": "assistant", "content": reply}, ask(1)]
    reply = yield {"messages": list(messages)}
    summary = {"role": "user", "content": f"{OPENCLAW_MARKER}\n\n<summary>Read it.</summary>"}
    compacted = [system, summary, messages[-1], {"role": "assistant", "content": reply}, ask(2)]
    reply = yield {"messages": compacted}
    yield {"messages": [*compacted, {"role": "assistant", "content": reply}, ask(3)]}


def test_compaction_summary_is_appended_to_what_the_slot_holds(
    rewriting: Proxy, llama: EmbeddedServer
) -> None:
    calls = run(rewriting.url, llama.url, compaction_session())
    assert [c.rewrite for c in calls] == ["none", "none", "compaction:openclaw", "none"]
    assert reused_previous(calls)
    assert calls[2].cache_n > 300  # the long first turn was not re-prefilled


def wait_for(predicate: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    return found


def test_records_name_the_rules_and_the_tokens_they_saved(rewriting: Proxy) -> None:
    records = wait_for(
        lambda: [
            r for r in read_records(rewriting.data_dir / "records") if "volatile" in r["rewrite"]
        ]
    )
    record = records[-1]
    assert record["rewrite_saved_predicted"] > 0
    assert record["rewrite_saved"] == record["cached_tokens"] - record["original_predicted"] > 0


def test_tapes_survive_a_restart_and_off_is_a_pure_router(
    llama: EmbeddedServer, tmp_path: Path
) -> None:
    session = Session(timestamp_session(3, turns=3))
    proxy = start_proxy(tmp_path, "--upstream", llama.url)
    first = run(proxy.url, llama.url, session, limit=2)
    stop_proxy(proxy)
    proxy = start_proxy(tmp_path, "--upstream", llama.url)  # same data dir: same LMDB
    try:
        rest = run(proxy.url, llama.url, session)
    finally:
        stop_proxy(proxy)
    assert [c.rewrite for c in first + rest] == ["none", "volatile", "volatile"]
    off = start_proxy(tmp_path / "off", "--upstream", llama.url, "--rewrite", "off")
    try:
        calls = run(off.url, llama.url, timestamp_session(4))
    finally:
        stop_proxy(off)
    assert [c.rewrite for c in calls] == ["none", "none", "none"]
    assert not reused_previous(calls)


def test_compaction_that_does_not_fit_goes_through_as_sent(
    llama: EmbeddedServer, tmp_path: Path
) -> None:
    """With almost no context left for the reply, the appended form is over budget: the
    client's compacted form goes upstream once and the record says why."""
    proxy = start_proxy(tmp_path, "--upstream", llama.url, "--rewrite-reserve-tokens", "3900")
    try:
        calls = run(proxy.url, llama.url, compaction_session())
        records = wait_for(lambda: list(read_records(proxy.data_dir / "records"))[3:])
    finally:
        stop_proxy(proxy)
    assert [c.rewrite for c in calls] == ["none", "none", "none", "none"]
    compacted = list(read_records(proxy.data_dir / "records"))[2]
    assert compacted["rewrite_cause"] == "over-budget" and compacted["miss_cause"] == "over-budget"
    assert records
