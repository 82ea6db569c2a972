"""Against the real llama-server (behind a logging reverse proxy that shows exactly what
kvproxy sent): each client's request carries its own system prompt, a new day's
conversation carries the new date, and what is stored at rest is private."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.logging_upstream import LoggingUpstream
from proxy.backends.embedded import EmbeddedServer
from proxy.records.read import read_records
from tests.conftest import Proxy, start_proxy, stop_proxy

pytestmark = pytest.mark.e2e

BASE = "You are the support agent of ACME Bank.\nBe polite and brief.\n" + "".join(
    f"Policy {i}: never disclose internal data to third parties.\n" for i in range(20)
)
ALICE = BASE + "Customer: Alice Smith, account 4421-9932-0017\n"
BOB = BASE + "Customer: Bob Jones, account 7781-1200-5530\n"


@pytest.fixture
def logged(llama: EmbeddedServer) -> Iterator[LoggingUpstream]:
    with LoggingUpstream(llama.url) as upstream:
        yield upstream


def chat(proxy: Proxy, messages: list[dict[str, Any]], **extra: Any) -> tuple[str, httpx.Response]:
    resp = httpx.post(
        proxy.url + "/v1/chat/completions",
        json={"messages": messages, "max_tokens": 8, "temperature": 0, **extra},
        timeout=300,
    )
    assert resp.status_code == 200, resp.text
    return resp.json()["choices"][0]["message"]["content"], resp


def sent_text(body: dict[str, Any]) -> str:
    out = []
    for message in body["messages"]:
        content = message.get("content")
        if isinstance(content, list):
            content = "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
        out.append(content or "")
    return "\n".join(out)


def test_alice_and_bob_each_get_their_own_system_prompt(
    logged: LoggingUpstream, tmp_path: Path
) -> None:
    proxy = start_proxy(tmp_path, "--upstream", logged.url)
    try:
        a1, _ = chat(
            proxy, [{"role": "system", "content": ALICE}, {"role": "user", "content": "hi"}]
        )
        b1, resp = chat(
            proxy, [{"role": "system", "content": BOB}, {"role": "user", "content": "hi"}]
        )
        chat(
            proxy,
            [
                {"role": "system", "content": BOB},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": b1},
                {"role": "user", "content": "What is my account?"},
            ],
        )
        chat(
            proxy,
            [
                {"role": "system", "content": ALICE},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": a1},
                {"role": "user", "content": "What is my account?"},
            ],
        )
    finally:
        stop_proxy(proxy)
    sent = [sent_text(body) for body in logged.chats()]
    assert len(sent) == 4
    for text, own, other in zip(
        sent, ["4421", "7781", "7781", "4421"], ["7781", "4421", "4421", "7781"], strict=True
    ):
        assert own in text and other not in text
    assert resp.headers["x-kvproxy-rewrite"] in ("none", "volatile")


def test_a_new_days_conversation_carries_the_new_date(
    logged: LoggingUpstream, tmp_path: Path
) -> None:
    day = "You write the daily report.\nToday is {}.\nUse bullet points.\nBe brief.\n"
    proxy = start_proxy(tmp_path, "--upstream", logged.url)
    try:
        for date in ("2026-11-21", "2026-11-22", "2026-11-23"):
            chat(
                proxy,
                [
                    {"role": "system", "content": day.format(date)},
                    {"role": "user", "content": "Write today's report."},
                ],
            )
    finally:
        stop_proxy(proxy)
    sent = [sent_text(body) for body in logged.chats()]
    for text, date in zip(sent, ("2026-11-21", "2026-11-22", "2026-11-23"), strict=True):
        assert date in text
        assert [d for d in ("2026-11-21", "2026-11-22", "2026-11-23") if d in text] == [date]


SECRET = "zebra-crossing-7731"


def session_with_secret(proxy: Proxy) -> None:
    system = f"You are an agent.\nThe vault code is {SECRET}.\nBe brief.\n"
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": system},
        {"role": "user", "content": f"remember {SECRET}"},
    ]
    for turn in range(3):
        reply, _ = chat(proxy, messages)
        messages += [
            {"role": "assistant", "content": reply},
            {"role": "user", "content": f"turn {turn}"},
        ]


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()]


def test_records_and_logs_hold_no_client_text(llama: EmbeddedServer, tmp_path: Path) -> None:
    proxy = start_proxy(tmp_path, "--upstream", llama.url)
    try:
        session_with_secret(proxy)
    finally:
        stop_proxy(proxy)
    records = list(read_records(proxy.data_dir / "records"))
    assert len(records) == 3 and SECRET not in repr(records)
    assert SECRET not in proxy.log_path.read_text() + (proxy.data_dir / "kvproxy.log").read_text()


def test_memory_tapes_leave_no_text_on_disk_and_modes_are_private(
    llama: EmbeddedServer, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    (data / "old.txt").write_text("left by an earlier run")
    os.chmod(data / "old.txt", 0o644)
    proxy = start_proxy(tmp_path, "--upstream", llama.url, "--keep-tapes", "memory")
    try:
        session_with_secret(proxy)
        chat(proxy, [{"role": "user", "content": "flush"}])
    finally:
        stop_proxy(proxy)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    for path in files_under(data):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert SECRET.encode() not in path.read_bytes(), path
    for path in data.rglob("*"):
        if path.is_dir():
            assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
