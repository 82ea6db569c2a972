"""Cache-aware routing against the real llama-server: predictions equal the server's own
``cache_n``, interleaved conversations prefill less than direct, evicted prefixes come back
from disk, and every request is recorded in LMDB (also across a kill -9)."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.workload import Conversation, play
from proxy.backends.embedded import EmbeddedServer
from proxy.config.settings import EmbeddedSettings
from proxy.records.read import read_records
from tests.conftest import Proxy, start_proxy, stop_proxy

pytestmark = pytest.mark.e2e

WORDS = 1300  # about 1500 tokens per opening prompt


@pytest.fixture(scope="module")
def llama_nocache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    """2 slots and no host-RAM prompt cache: only the slots hold state."""
    server = EmbeddedServer.start(
        EmbeddedSettings(parallel=2, ctx_per_slot=4096, extra_args=("--cache-ram", "0")),
        tmp_path_factory.mktemp("llama-nocache"),
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def routed(
    llama_nocache: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    proxy = start_proxy(tmp_path_factory.mktemp("routed"), "--upstream", llama_nocache.url)
    yield proxy
    stop_proxy(proxy)


def wait_records(path: Path, count: int, timeout: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        records = list(read_records(path))
        if len(records) >= count or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


@pytest.fixture(scope="module")
def interleaved(routed: Proxy, llama_nocache: EmbeddedServer) -> dict:
    """4 conversations x 3 turns on 2 slots, through kvproxy and then direct."""
    via = play(routed.url, [Conversation.start(s, WORDS) for s in range(4)], turns=3)
    direct = play(llama_nocache.url, [Conversation.start(s, WORDS) for s in range(50, 54)], 3)
    records = wait_records(routed.data_dir / "records", len(via))
    return {"via": via, "direct": direct, "records": records}


def test_prompts_are_long(interleaved: dict) -> None:
    assert min(c.prompt_tokens for c in interleaved["via"]) >= 1500


def test_predicted_cached_tokens_equal_the_servers_cache_n(interleaved: dict) -> None:
    calls = interleaved["via"]
    assert len(calls) == 12
    assert [c.predicted for c in calls] == [c.cache_n for c in calls]


def test_fewer_tokens_prefilled_than_direct(interleaved: dict) -> None:
    via = sum(c.prompt_n for c in interleaved["via"])
    direct = sum(c.prompt_n for c in interleaved["direct"])
    assert via < direct
    # every turn after the first reuses its conversation's history through kvproxy
    assert all(c.cache_n >= 1500 for c in interleaved["via"] if c.turn > 0)


def test_evicted_conversations_are_restored_from_disk(interleaved: dict) -> None:
    restored = [r for r in interleaved["records"] if r["restored"]]
    assert restored, "4 conversations on 2 slots must restore"
    for r in restored:
        assert r["route_reason"] == "restore"
        assert r["cached_tokens"] == r["predicted_cached"] >= 1500
        assert r["miss_cause"] is None


def test_every_request_is_recorded_with_prediction_and_actual(interleaved: dict) -> None:
    records = interleaved["records"]
    assert len(records) == 12
    for r in records:
        assert r["dialect"] == "openai_chat" and r["status"] == 200
        assert re.fullmatch(r"0/[01]", r["slot"])
        assert r["predicted_cached"] == r["cached_tokens"]
        assert r["prompt_tokens"] == r["cached_tokens"] + r["prefilled_tokens"]
        assert r["ttft_ms"] > 0 and r["prefill_ms"] >= 0 and r["decode_tps"] > 0
    assert {r["miss_cause"] for r in records[:4]} == {"cold"}


def test_stats_summarizes_the_records(routed: Proxy, interleaved: dict) -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "proxy", "stats", "--data-dir", str(routed.data_dir)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "requests            12" in out
    assert "predicted = actual  12/12 requests (100.0%)" in out
    assert "0/0" in out and "0/1" in out


def test_cache_header_and_openai_cached_tokens(routed: Proxy) -> None:
    body = {"messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 4}
    first = httpx.post(routed.url + "/v1/chat/completions", json=body, timeout=60)
    again = httpx.post(routed.url + "/v1/chat/completions", json=body, timeout=60)
    header = again.headers["x-kvproxy-cache"]
    match = re.fullmatch(r"cached=(\d+); prompt=(\d+); slot=0/([01])", header)
    assert match and first.status_code == again.status_code == 200
    usage = again.json()["usage"]
    assert usage["prompt_tokens"] == int(match.group(2))
    assert usage["prompt_tokens_details"]["cached_tokens"] == int(match.group(1)) > 0


def test_ollama_dialect_is_routed_and_recorded(routed: Proxy) -> None:
    body = {
        "model": "m",
        "prompt": "Count to three.",
        "stream": False,
        "options": {"num_predict": 4},
    }
    resp = httpx.post(routed.url + "/api/generate", json=body, timeout=60)
    assert resp.status_code == 200 and "x-kvproxy-cache" in resp.headers
    path = routed.data_dir / "records"
    deadline = time.monotonic() + 30
    while not (found := [r for r in read_records(path) if r["dialect"] == "ollama_generate"]):
        assert time.monotonic() < deadline, "no record for the ollama request"
        time.sleep(0.1)
    assert (
        found[-1]["cached_tokens"] is not None
        and found[-1]["slot"] == resp.headers["x-kvproxy-cache"].split("slot=")[1]
    )


def test_records_survive_kill_9(llama_nocache: EmbeddedServer, tmp_path: Path) -> None:
    proxy = start_proxy(tmp_path, "--upstream", llama_nocache.url)
    body = {"messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 3}
    try:
        for _ in range(5):
            assert httpx.post(proxy.url + "/v1/chat/completions", json=body, timeout=60).is_success
        committed = wait_records(proxy.data_dir / "records", 5)
        assert len(committed) == 5
    finally:
        stop_proxy(proxy, signal.SIGKILL)
    after = list(read_records(proxy.data_dir / "records"))
    assert [r["request_id"] for r in after] == [r["request_id"] for r in committed]


def test_several_upstreams_share_the_load(tmp_path: Path) -> None:
    servers = [
        EmbeddedServer.start(EmbeddedSettings(parallel=1, ctx_per_slot=4096), tmp_path / f"s{i}")
        for i in range(2)
    ]
    proxy = start_proxy(tmp_path / "p", "--upstream", servers[0].url, "--upstream", servers[1].url)
    try:
        calls = play(proxy.url, [Conversation.start(s, 400) for s in (1, 2)], turns=2)
        first = {c.conversation: c.slot for c in calls if c.turn == 0}
        second = {c.conversation: c.slot for c in calls if c.turn == 1}
        assert first == second and set(first.values()) == {"0/0", "1/0"}
        assert all(c.predicted == c.cache_n and c.cache_n > 400 for c in calls if c.turn == 1)
    finally:
        stop_proxy(proxy)
        for server in servers:
            server.stop()


def test_restarted_upstream_gets_its_conversations_back(tmp_path: Path) -> None:
    """Idle slots are checkpointed; after the server restarts empty, kvproxy notices it
    (/slots) and restores each conversation before its next turn."""
    settings = EmbeddedSettings(parallel=2, ctx_per_slot=4096, extra_args=("--cache-ram", "0"))
    llama = EmbeddedServer.start(settings, tmp_path / "llama")
    proxy = start_proxy(tmp_path / "p", "--upstream", llama.url, "--slot-checkpoint-idle", "0.3",
                        "--slot-dir", str(tmp_path / "llama" / "slots"))  # fmt: skip
    try:
        convs = [Conversation.start(s, 500) for s in (7, 8)]
        first = play(proxy.url, convs, turns=1)
        slot_files = tmp_path / "llama" / "slots"
        deadline = time.monotonic() + 30
        while len(list(slot_files.glob("kvp-*.bin"))) < 2:
            assert time.monotonic() < deadline, "idle slots were not checkpointed"
            time.sleep(0.2)
        port = llama.port
        llama.stop()
        llama = EmbeddedServer.start(settings, tmp_path / "llama", port)
        after = play(proxy.url, convs, turns=1, first_turn=1)
        for before, call in zip(first, after, strict=True):
            assert call.predicted == call.cache_n >= before.prompt_tokens
    finally:
        stop_proxy(proxy)
        llama.stop()


def test_restarted_kvproxy_starts_warm(llama_nocache: EmbeddedServer, tmp_path: Path) -> None:
    """Slot contents are mirrored to LMDB: after a kvproxy restart the next turn is still
    predicted exactly (and the server reuses the conversation)."""
    convs = [Conversation.start(s, 300) for s in (31, 32)]
    proxy = start_proxy(tmp_path, "--upstream", llama_nocache.url)
    try:
        play(proxy.url, convs, turns=1)
    finally:
        stop_proxy(proxy)
    proxy = start_proxy(tmp_path, "--upstream", llama_nocache.url)
    try:
        after = play(proxy.url, convs, turns=1, first_turn=1)
    finally:
        stop_proxy(proxy)
    assert all(c.predicted == c.cache_n > 300 for c in after)


def test_the_restore_cost_is_learned_from_the_servers_timings(
    routed: Proxy, interleaved: dict
) -> None:
    """The saves and restores above answered with llama-server's own timings: the router
    no longer charges the default tenth (issue 20; the share itself depends on the machine)."""
    text = httpx.get(routed.url + "/metrics", timeout=10).text
    shares = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith("kvproxy_restore_cost_share{")]  # fmt: skip
    assert len(shares) == 1
    assert 0.001 <= shares[0] <= 1.0 and shares[0] != 0.1
