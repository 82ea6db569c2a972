"""Shutdown that is bounded and loses nothing (issue 21).

On SIGTERM kvproxy stops accepting, refuses what has not started yet (a 503 in the
client's dialect, with Retry-After, recorded), lets what is in flight finish within
``--shutdown-grace`` seconds, then cuts what remains (each still recorded) and flushes the
records. ``Lifecycle`` is the part the handlers see: it counts the requests in flight and
says when draining has begun.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import unquote

from aiohttp import web
from aiohttp.http_writer import StreamWriter

from proxy.core.errors import Overloaded
from proxy.core.log import get_logger
from proxy.records.store import RecordStore

log = get_logger("kvproxy.lifecycle")

# 499: the client closed the connection before the answer was complete (nginx's code).
CLIENT_CLOSED = 499
RETRY_AFTER = "5"
# After the grace period: how long cut requests get to write their error frame and record.
CUT_WAIT = 2.0


class ShuttingDown(Overloaded):
    """kvproxy is shutting down: this request was not started (the client may retry
    elsewhere, or here once it is back)."""

    status = 503
    code = "shutting_down"


@dataclass
class Lifecycle:
    """In-flight requests (their tasks) and the drain state; one per Application."""

    grace: float = 15.0
    draining: bool = False
    _active: dict[asyncio.Task[object], int] = field(default_factory=dict)
    _queued: set[asyncio.Task[object]] = field(default_factory=set)
    _refused: set[asyncio.Task[object]] = field(default_factory=set)
    _cut: set[asyncio.Task[object]] = field(default_factory=set)
    _idle: asyncio.Event = field(default_factory=asyncio.Event)
    _hurry: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._idle.set()

    @property
    def inflight(self) -> int:
        return len(self._active)

    @property
    def cutting(self) -> bool:
        """The grace is over: what is still running is being cut."""
        return bool(self._cut)

    def refusal(self) -> ShuttingDown:
        return ShuttingDown("kvproxy is shutting down and starts no new requests; retry later")

    def cut_error(self) -> ShuttingDown:
        return ShuttingDown(f"kvproxy shut down: the request was cut after the {self.grace:g} s "
                            "grace period (--shutdown-grace)")  # fmt: skip

    def check(self) -> None:
        """Raise ``ShuttingDown`` once draining has begun (at admission, and again right
        before a request goes upstream)."""
        if self.draining:
            raise self.refusal()

    def enter(self) -> None:
        """Count the current request as in flight (until ``leave``); the handler then
        calls ``check`` inside its error handling, so a refusal is answered and recorded."""
        task = asyncio.current_task()
        assert task is not None
        self._active[task] = self._active.get(task, 0) + 1
        self._idle.clear()

    def leave(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        depth = self._active.pop(task, 1) - 1
        if depth > 0:
            self._active[task] = depth
        else:
            self._refused.discard(task)
        if not self._active:
            self._idle.set()

    @contextlib.contextmanager
    def queue(self) -> Iterator[None]:
        """A wait in one of kvproxy's queues (a slot, the upstream's gate): when draining
        begins the wait ends at once with ``ShuttingDown`` instead of starting the request
        later. Nothing but the awaited queue may run inside the block."""
        self.check()
        task = asyncio.current_task()
        assert task is not None
        self._queued.add(task)
        try:
            yield
        except asyncio.CancelledError:
            if task in self._refused and task.uncancel() == 0:
                raise self.refusal() from None
            raise
        finally:
            self._queued.discard(task)

    def begin_drain(self) -> int:
        """Refuse from now on, and end every wait in a queue; the number of requests then
        in flight (queued ones included)."""
        self.draining = True
        for task in list(self._queued):
            self._refused.add(task)
            task.cancel("kvproxy is shutting down")
        return len(self._active)

    def hurry(self) -> None:
        """A second signal: stop waiting for the grace period."""
        self._hurry.set()

    async def drain(self) -> bool:
        """Wait until nothing is in flight, at most ``grace`` seconds (less after a second
        signal); whether everything finished."""
        idle = asyncio.ensure_future(self._idle.wait())
        hurry = asyncio.ensure_future(self._hurry.wait())
        try:
            await asyncio.wait({idle, hurry}, timeout=self.grace,
                               return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        finally:
            idle.cancel()
            hurry.cancel()
        return self._idle.is_set()

    def was_cut(self, task: asyncio.Task[object] | None) -> bool:
        return task is not None and task in self._cut

    def cut(self) -> int:
        """Cancel what is still in flight; each handler records it as cut and ends a
        started stream with an error frame (``end_stream``). The number cut."""
        left = [task for task in self._active if not task.done()]
        self._cut.update(left)
        for task in left:
            task.cancel("kvproxy is shutting down: the grace period is over")
        return len(left)

    async def wait_idle(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        return self._idle.is_set()


async def shutdown(lifecycle: Lifecycle, runner: web.AppRunner, store: RecordStore) -> None:
    """After the signal: stop accepting, refuse what has not started, wait out the grace,
    cut the rest, flush the records. The runner's cleanup then closes the connections
    and runs the cleanup contexts (the store is closed last)."""
    inflight = lifecycle.begin_drain()
    log.info("shutting_down", inflight=inflight, grace_s=lifecycle.grace)
    for site in list(runner.sites):
        await site.stop()  # new connections are refused from here on
    if runner.server is not None:
        runner.server.pre_shutdown()  # kept-alive connections close after their request
    if not await lifecycle.drain():
        log.warning("shutdown_grace_over", cutting=lifecycle.cut(), grace_s=lifecycle.grace)
        await lifecycle.wait_idle(CUT_WAIT)
    await store.flush()  # every record committed before anything else can stall
    log.info("drained", inflight=lifecycle.inflight)


async def end_stream(request: web.BaseRequest, frame: bytes) -> None:
    """A cut response whose headers went out (a chunked stream) ends with ``frame`` (an
    error in the client's framing) and a proper end of body, so the client reads an error
    instead of a truncated response. Bounded: a client that reads nothing is left as is."""
    writer = request.writer
    if not isinstance(writer, StreamWriter) or not writer.chunked:
        return
    with contextlib.suppress(ConnectionError, RuntimeError, TimeoutError):
        async with asyncio.timeout(CUT_WAIT / 2):
            await writer.write(frame)
            await writer.write_eof()


@dataclass(frozen=True)
class WarmToken:
    """The per-process secret kvproxy's own warmer sends in ``x-kvproxy-warm`` (before the
    warm file's name): only a request that carries it is a warm-up. A client that sends
    the header is an ordinary request (it gets its tape, and the header goes no further)."""

    value: str = field(default_factory=lambda: secrets.token_hex(16))

    def name_of(self, header: str | None) -> str | None:
        """The warm file's name the header gives, when it carries this token; else None."""
        if not header:
            return None
        token, _, name = header.partition(" ")
        if not secrets.compare_digest(token.encode(), self.value.encode()):
            return None
        return unquote(name) or None  # the warmer percent-encodes it (warm.header_name)
