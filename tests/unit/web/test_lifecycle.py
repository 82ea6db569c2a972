"""Lifecycle (issue 21): the drain refuses what waits in a queue and what comes later, cuts
what outlives the grace; the warm token; the shipped stop timeouts fit the shutdown."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from proxy.config.settings import Settings
from proxy.web.lifecycle import CUT_WAIT, Lifecycle, ShuttingDown, WarmToken

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"


async def test_a_queued_request_is_refused_when_the_drain_begins() -> None:
    life = Lifecycle(grace=1)
    never = asyncio.Event()

    async def request() -> str:
        life.enter()
        try:
            with life.queue():
                await never.wait()
            return "started"
        except ShuttingDown:
            return "refused"
        finally:
            life.leave()

    task = asyncio.create_task(request())
    await asyncio.sleep(0)
    assert life.inflight == 1
    assert life.begin_drain() == 1
    assert await task == "refused" and not task.cancelled()
    assert await life.drain() and life.inflight == 0
    with pytest.raises(ShuttingDown):
        life.check()  # and every later request, at admission or before dispatch


async def test_what_outlives_the_grace_is_cut() -> None:
    life = Lifecycle(grace=0.05)
    seen: list[bool] = []

    async def stream() -> None:
        life.enter()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            seen.append(life.was_cut(asyncio.current_task()))
            raise
        finally:
            life.leave()

    task = asyncio.create_task(stream())
    await asyncio.sleep(0)
    life.begin_drain()
    assert not await life.drain()  # the grace ran out
    assert life.cut() == 1
    assert await life.wait_idle(CUT_WAIT) and task.cancelled() and seen == [True]


async def test_a_second_signal_ends_the_grace() -> None:
    life = Lifecycle(grace=60)
    life.enter()
    life.begin_drain()
    life.hurry()
    assert not await asyncio.wait_for(life.drain(), 5)  # a hang guard only
    life.leave()


def test_only_the_warm_token_marks_a_warm_up() -> None:
    token = WarmToken()
    assert token.name_of(f"{token.value} agent.json") == "agent.json"
    assert token.name_of("agent.json") is None  # what a client sends
    assert token.name_of(f"{WarmToken().value} agent.json") is None  # another process's
    assert token.name_of(None) is None and token.name_of(f"{token.value[:-1]} x") is None


def test_the_shutdown_fits_the_shipped_stop_timeouts() -> None:
    """--shutdown-grace's default plus the cut fit, with room for the cleanup, inside what
    systemd and compose wait before they kill kvproxy (Docker's default is 10 s)."""
    bound = Settings().shutdown_grace + CUT_WAIT + 5
    unit = (DEPLOY / "systemd" / "kvproxy.service").read_text().splitlines()
    (stop,) = [ln.split("=", 1)[1] for ln in unit if ln.startswith("TimeoutStopSec=")]
    assert bound <= float(stop)
    compose = (DEPLOY / "compose.yaml").read_text().splitlines()
    periods = [ln.split(":", 1)[1].strip() for ln in compose
               if ln.strip().startswith("stop_grace_period:")]  # fmt: skip
    assert len(periods) == 2 and all(bound <= float(p.removesuffix("s")) for p in periods)
    assert "STOPSIGNAL SIGTERM" in (DEPLOY / "Dockerfile").read_text()
