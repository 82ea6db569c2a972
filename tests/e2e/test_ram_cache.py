"""llama-server's host-RAM prompt cache (on by default) through kvproxy, on the real server:
kvproxy's prediction equals the server's ``cache_n`` on every request while the server
saves slots to RAM and loads them back (docs/tokens.md, "llama-server's host-RAM prompt
cache"), and a session whose early tokens changed goes where RAM serves its own history."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bench.workload import parse_cache_header
from proxy.backends.embedded import EmbeddedServer
from proxy.config.settings import EmbeddedSettings
from tests.conftest import Proxy, start_proxy, stop_proxy
from tests.e2e.test_routing_e2e import wait_records

pytestmark = pytest.mark.e2e

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
         "juliet", "kilo", "lima", "mike"]  # fmt: skip


def doc(seed: int, n: int = 220) -> str:
    """About 3.6 tokens a word: 220 words are ~790 tokens."""
    out, x = [], seed * 7919 + 13
    for _ in range(n):
        x = (x * 1103515245 + 12345) % (2**31)
        out.append(WORDS[x % len(WORDS)] + str(x % 97))
    return " ".join(out)


def conv(name: str, turns: int, system: bool = True) -> list[dict[str, str]]:
    msgs = []
    if system:
        msgs.append({"role": "system", "content": f"You are assistant {name}. " + doc(ord(name))})
    msgs.append({"role": "user", "content": f"Question {name}1: summarise."})
    for t in range(2, turns + 1):
        msgs.append({"role": "assistant", "content": f"Answer {name}{t - 1} ok."})
        msgs.append({"role": "user", "content": f"Question {name}{t}: and then?"})
    return msgs


@dataclass
class Pair:
    llama: EmbeddedServer
    proxy: Proxy


@dataclass(frozen=True)
class Sent:
    predicted: int
    cache_n: int
    slot: str


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    """A fresh server (2 slots, the default --cache-ram) and kvproxy in front of it."""
    llama = EmbeddedServer.start(EmbeddedSettings(parallel=2, ctx_per_slot=4096),
                                 tmp_path / "llama")  # fmt: skip
    proxy = start_proxy(tmp_path / "proxy", "--upstream", llama.url, "--rewrite", "off",
                        "--upstream-cache-ram", "8192")  # fmt: skip
    yield Pair(llama, proxy)
    stop_proxy(proxy)
    llama.stop()


def send(pair: Pair, messages: list[dict[str, str]]) -> Sent:
    body = {"messages": messages, "max_tokens": 4, "temperature": 0}
    resp = httpx.post(pair.proxy.url + "/v1/chat/completions", json=body, timeout=120)
    resp.raise_for_status()
    predicted, slot = parse_cache_header(resp.headers.get("x-kvproxy-cache"))
    assert predicted is not None and slot is not None
    return Sent(predicted, int(resp.json()["timings"]["cache_n"]), slot)


def records_agree(pair: Pair, count: int) -> None:
    records = wait_records(pair.proxy.data_dir / "records", count)
    assert len(records) == count
    assert [r["predicted_cached"] for r in records] == [r["cached_tokens"] for r in records]


def test_predictions_equal_cache_n_with_the_ram_cache(pair: Pair) -> None:
    """The measured cases through kvproxy: A's slot given to C after an idle-slot save put
    A in RAM; A's next turn loaded from RAM over another conversation (claim 1), the entry
    consumed (claim 3); B likewise; short conversations sharing the default system prompt
    (claim 4)."""
    sent = [send(pair, conv(n, 1)) for n in "ABC"]
    assert [s.cache_n for s in sent] == [s.predicted for s in sent]
    a2 = send(pair, conv("A", 2))
    assert a2.cache_n == a2.predicted > 700  # loaded from RAM, not prefilled
    b2 = send(pair, conv("B", 2))
    assert b2.cache_n == b2.predicted > 700
    c2 = send(pair, conv("C", 2))
    assert c2.cache_n == c2.predicted
    short = [send(pair, conv(n, 1, system=False)) for n in "DF"]
    assert [s.cache_n for s in short] == [s.predicted for s in short]
    a3 = send(pair, conv("A", 3))
    assert a3.cache_n == a3.predicted
    records_agree(pair, 9)


def session(notes: int, date: str, turns: int = 1) -> list[dict[str, str]]:
    """OpenClaw-like: one system prompt for every session; the session's own notes, then
    the date, then more, in its first user message."""
    first = f"Notes {notes}: {doc(notes, 280)} Today is {date}. {doc(notes + 50, 60)}"
    msgs = [{"role": "system", "content": "You are a helpful agent. " + doc(7)},
            {"role": "user", "content": first}]  # fmt: skip
    for t in range(2, turns + 1):
        msgs += [{"role": "assistant", "content": f"Done {t - 1}."},
                 {"role": "user", "content": f"Step {t}."}]  # fmt: skip
    return msgs


def test_a_changed_date_goes_where_ram_serves_its_session(pair: Pair) -> None:
    """S1, X, then S2 sharing S1's system prompt, then Y (S1 idle-saved to RAM). After
    midnight S1's request shares only the system prompt with S2 and its notes too with its
    own history, which the server serves (from RAM where the lookup fires): kvproxy
    predicts it exactly and sends it there (the routing decision: test_ram_routing)."""
    sent = [send(pair, session(1, "Monday 2025-01-06")), send(pair, conv("X", 1))]
    s2 = send(pair, [*session(2, "Monday 2025-01-06")[:1],
                     {"role": "user", "content": "Quick question."}])  # fmt: skip
    sent += [s2, send(pair, conv("Y", 1))]
    dated = send(pair, session(1, "Tuesday 2025-01-07", turns=2))
    sent.append(dated)
    assert [s.cache_n for s in sent] == [s.predicted for s in sent]
    assert dated.cache_n > s2.cache_n + 900, sent  # its notes came back, not just the system
    records_agree(pair, 5)
