"""One dialect request, owned from admission to its record: named phases on one value.

The web handler reads the body, calls ``prepare`` (plan, route, gate, dispatch), relays the
upstream's answer, then calls ``settle``; ``close`` runs whatever happened. Nothing here
touches a socket: the director is tested with fake slots and no server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from proxy.backends.base import Placement, UpstreamCall
from proxy.backends.kinds import backend_for
from proxy.config.settings import Settings
from proxy.core.conversation import Conversation, MessageMemo
from proxy.core.errors import BadRequest, NotFound, Overloaded, ProxyError
from proxy.core.limits import MAX_TOKEN_BYTES, BodyHold, cannot_fit
from proxy.core.log import get_logger
from proxy.core.prefix_index import Prompt
from proxy.core.streaming import UsageObserver
from proxy.dialects import openai_responses
from proxy.dialects.base import DialectBase
from proxy.flow.ceiling import SessionCeiling, client_label, session_of
from proxy.flow.responses import ResponseStore, StoredResponse
from proxy.records.record import RequestRecord, new_request_id
from proxy.rewrite.engine import Plan, Rewriter
from proxy.rewrite.identity import identify, principal_of
from proxy.slots.manager import SlotManager, prompt_of
from proxy.slots.servers import Lease, miss_cause
from proxy.slots.table import PUBLIC
from proxy.tokens.base import Partial

log = get_logger("kvproxy.director")

CACHE_HEADER = "x-kvproxy-cache"
REWRITE_HEADER = "x-kvproxy-rewrite"
# The record's request_id, on every dialect response: `kvproxy explain ID` finds it.
REQUEST_ID_HEADER = "x-kvproxy-request-id"
# A session key for a conversation the client did not name: echoed back, it names it.
SESSION_HEADER = "x-kvproxy-session"
SNIPPET_CHARS = 160
# Errors raised while reading the client's own body (parsing, planning, tokenizing) before
# anything went upstream: a malformed request, answered 400 without a traceback.
MALFORMED = (TypeError, ValueError, AttributeError, KeyError, IndexError, UnicodeError,
             RecursionError, OverflowError)  # fmt: skip

Calls = dict[int, UpstreamCall]


class Gatekeeper(Protocol):
    """What the process lifecycle says about starting work (``proxy.web.lifecycle``)."""

    def check(self) -> None: ...

    def queue(self) -> AbstractContextManager[None]: ...


@dataclass
class Exchange:
    """One request on its way: what each phase found, for the next and for the record."""

    dialect: DialectBase
    rec: RequestRecord
    hold: BodyHold
    observer: UsageObserver = field(default_factory=UsageObserver)
    conv: Conversation | None = None
    plan: Plan | None = None
    calls: Calls = field(default_factory=dict)
    prompts: dict[int, Prompt | None] = field(default_factory=dict)
    original_cached: int | None = None
    ticket: int | None = None  # the request's /slots look-ahead (``SlotManager.look_ahead``)
    lease: Lease | None = None
    gate: asyncio.Semaphore | None = None
    waited_ms: float = 0.0
    call: UpstreamCall | None = None  # what goes upstream, once dispatched
    headers: dict[str, str] = field(default_factory=dict)  # kvproxy's response headers
    items: list[dict[str, Any]] | None = None  # a Responses request's whole input
    answer: dict[str, Any] | None = None  # a Responses request's finished response
    # An appended turn routed on its head (``SlotManager.heads_for``): the rest of its
    # prompt, tokenized after dispatch (``finish_prompt``, in ``finishing``)
    partial: Partial | None = None
    finishing: asyncio.Task[None] | None = None


@dataclass
class Director:
    slots: SlotManager
    rewriter: Rewriter
    messages: MessageMemo
    settings: Settings
    sink: Callable[[dict[str, Any]], None]
    gatekeeper: Gatekeeper
    responses: ResponseStore = field(default_factory=ResponseStore)
    ceiling: SessionCeiling = field(default_factory=SessionCeiling)

    # -- phases -------------------------------------------------------------------------
    def admit(self, dialect: DialectBase, path: str, hold: BodyHold,
              warm: str | None = None) -> Exchange:  # fmt: skip
        """A record for the request from its first moment (``warm``: kvproxy's own
        warm-up, checked by the caller). /slots is read from now on
        (``SlotManager.look_ahead``), while the body arrives and is parsed: its answer is
        in by the time the request is routed."""
        rec = RequestRecord(request_id=new_request_id(), path=path, dialect=dialect.name,
                            sink=self.sink, warm=warm)  # fmt: skip
        ex = Exchange(dialect, rec, hold)
        ex.ticket = self.slots.look_ahead()
        return ex

    async def prepare(self, ex: Exchange, body: Any, headers: Mapping[str, str],
                      raw_path: str) -> UpstreamCall:  # fmt: skip
        """Plan, route, gate and dispatch: the call to send upstream. The event loop is
        given one turn first: the /slots reading ``admit`` started sends its request then,
        and the server answers while the body is parsed and tokenized. Planning an appended
        turn never waits on its own, so the request would otherwise go out only when
        routing waits for its answer (a round trip on the request's path)."""
        await asyncio.sleep(0)
        await self.plan(ex, body, headers, raw_path)
        await self.route(ex)
        await self.enter_gate(ex)
        return self.dispatch(ex)

    async def plan(self, ex: Exchange, body: Any, headers: Mapping[str, str],
                   raw_path: str) -> None:  # fmt: skip
        """Parse into the canonical conversation, rewrite it (``Rewriter.plan``), build each
        upstream's call and tokens; a malformed body is a 400."""
        try:
            if ex.dialect.family == "responses":
                body = self.earlier_responses(ex, body, headers)
            ex.conv = ex.dialect.parse(body, self.messages)
            ex.rec.model, ex.rec.stream = ex.conv.model, ex.conv.stream
            await self._plan(ex, headers, raw_path)
        except MALFORMED as exc:
            log.warning("request_malformed", request_id=ex.rec.request_id,
                        error=f"{type(exc).__name__}: {str(exc)[:200]}")  # fmt: skip
            raise BadRequest(f"malformed request: {type(exc).__name__}") from exc

    async def _plan(self, ex: Exchange, headers: Mapping[str, str], raw_path: str) -> None:
        """A compaction append that would not fit the context falls back to the client's
        compacted form (``over-budget``); a prompt that certainly fits no slot is refused
        before it is tokenized (``cannot_fit``)."""
        assert ex.conv is not None
        plan = self.rewriter.plan(ex.conv, identify(headers, ex.conv))
        contexts = [server.n_ctx for server in self.slots.servers]
        if cannot_fit(ex.conv, contexts) and cannot_fit(plan.conv, contexts):
            largest = max(n or 0 for n in contexts)
            raise BadRequest(f"prompt exceeds the context of every slot ({largest} tokens; "
                             f"the users' text alone is over {MAX_TOKEN_BYTES} bytes a "
                             "token)")  # fmt: skip
        original: list[dict[int, Prompt | None]] = []
        while True:
            calls = self.calls_for(ex.dialect, plan.conv, raw_path)
            bodies = {i: c.body for i, c in calls.items()}
            rewritten = plan.applied and plan.conv is not plan.original
            if plan.fallback is None and not rewritten and ex.rec.warm is None:
                heads = await self.slots.heads_for(plan.conv, bodies)
                if heads is not None:
                    prompts, ex.partial = heads
                    break
            wanted = [self.slots.tokens_for(plan.conv, bodies)]
            if rewritten:
                originals = self.calls_for(ex.dialect, plan.original, raw_path)
                wanted.append(self.slots.tokens_for(
                    plan.original, {i: c.body for i, c in originals.items()}))  # fmt: skip
            prompts, *original = await asyncio.gather(*wanted)
            reserve = self.rewriter.config.reserve_tokens
            if plan.fallback is None or not self.over_budget(prompts, reserve):
                break
            plan = plan.fallback
        ex.plan, ex.calls, ex.prompts = plan, calls, prompts
        ex.rec.client = client_label(headers)
        ex.rec.session = plan.identity.session[:12] if plan.identity.session else None
        if original:
            ex.original_cached = self.slots.best_predicted(original[0], plan.identity.principal)

    async def route(self, ex: Exchange) -> None:
        """A slot for the request (``SlotManager.acquire_prompts``), reused only as far as
        its principal owns what the slot holds; a warm-up's content is PUBLIC."""
        assert ex.plan is not None
        owner = PUBLIC if ex.rec.warm is not None else ex.plan.identity.principal
        with self.gatekeeper.queue():  # a drain ends the wait with a 503
            ex.lease = await self.slots.acquire_prompts(ex.prompts, owner, ex.ticket)
        part = ex.partial
        if part is not None and not self.slots.head_decides(ex.lease, part.tail_bytes):
            await self.finish_prompt(ex)  # the tail may change the route: known before it goes
        else:
            self.note_lease(ex)

    def note_lease(self, ex: Exchange) -> None:
        """The route in the record, once the whole prompt is known."""
        assert ex.lease is not None and ex.plan is not None
        note_route(ex.rec, ex.lease)
        if ex.partial is None and ex.lease.prompt is not None and ex.rec.warm is None:
            ex.rec.ceiling_tokens = self.ceiling.reached(session_of(ex.plan), ex.lease.prompt)

    async def finish_prompt(self, ex: Exchange) -> None:
        """The whole prompt of a request routed on its head: its new text tokenized in a
        worker thread (llama.cpp's tokenizer releases the GIL), then the lease's
        prediction, the record and the cache header as routing on it gives them
        (``SlotManager.complete``). A failure leaves the head: a prefix of the prompt,
        what the slot is then known to hold at least."""
        part, lease = ex.partial, ex.lease
        assert part is not None and lease is not None
        started = time.perf_counter()
        try:
            tokens = await asyncio.to_thread(part.rest)
        except ProxyError as err:
            log.warning("tokenize_failed", request_id=ex.rec.request_id, error=err.message)
        else:
            self.slots.complete(lease, prompt_of(lease.server, tokens))
            ex.partial = None
            if ex.finishing is not None:
                ex.rec.tail_ms = round((time.perf_counter() - started) * 1000, 2)
        self.note_lease(ex)
        if CACHE_HEADER in ex.headers:
            ex.headers.update(cache_header(lease))

    async def prompt_known(self, ex: Exchange) -> None:
        """Wait for the prompt tokenized after dispatch (``finish_prompt``): the answer's
        headers and the slot's record need it."""
        if ex.finishing is not None:
            await ex.finishing

    async def enter_gate(self, ex: Exchange) -> None:
        """One of the upstream's in-flight places; past ``--queue-timeout`` a 503."""
        assert ex.lease is not None
        started = time.perf_counter()
        timeout = self.settings.queue_timeout
        with self.gatekeeper.queue():
            try:
                async with asyncio.timeout(timeout):
                    await ex.lease.server.gate.acquire()
            except TimeoutError as exc:
                raise Overloaded(
                    f"the upstream is at its limit of requests in flight; waited {timeout:g} "
                    "s, retry later"
                ) from exc
        ex.gate = ex.lease.server.gate
        ex.waited_ms = (time.perf_counter() - started) * 1000 + ex.lease.queued_ms

    def dispatch(self, ex: Exchange) -> UpstreamCall:
        """The upstream call as the chosen server kind needs it, and kvproxy's headers."""
        plan, lease, rec = ex.plan, ex.lease, ex.rec
        assert plan is not None and lease is not None
        note_rewrite(rec, plan, ex.original_cached)
        if self.settings.log_content:
            rec.snippets = snippets(plan)
        call = ex.calls[lease.route.server]
        where = Placement(lease.route.slot, lease.isolated, lease.server.ollama_ctx)
        prepared = backend_for(lease.server.upstream.kind).prepare(
            call, ex.dialect, where, self.settings.ollama_keep
        )
        if prepared.replaced is not None:
            rec.ollama_replaced = prepared.replaced
        ex.call = replace(call, body=prepared.body)
        ex.headers = {**cache_header(lease), REWRITE_HEADER: plan.header,
                      REQUEST_ID_HEADER: rec.request_id}  # fmt: skip
        if plan.session_key is not None:
            ex.headers[SESSION_HEADER] = plan.session_key
        rec.overhead_ms = round((time.perf_counter() - rec.t0) * 1000 - ex.waited_ms, 2)
        self.gatekeeper.check()  # nothing starts once draining began, however long it queued
        if ex.partial is not None:
            ex.finishing = asyncio.create_task(self.finish_prompt(ex))
        return ex.call

    def settle(self, ex: Exchange) -> None:
        """The answer is relayed: record the outcome, update the slot, keep the tape.
        Synchronous on purpose: a client that hangs up cannot cut it in half."""
        lease, rec, plan = ex.lease, ex.rec, ex.plan
        assert lease is not None and plan is not None
        note_outcome(rec, lease)
        completed = rec.status == 200 and rec.error is None
        generated = lease.server.tokenizer.text_tokens(ex.observer.text) if completed else None
        self.slots.release(lease, completed=completed, generated=generated,
                           finish_reason=ex.observer.finish_reason,
                           cached_actual=rec.cached_tokens,
                           reply_text=ex.observer.text, prefilled=rec.prefilled_tokens,
                           prefill_ms=rec.prefill_ms)  # fmt: skip
        if completed and rec.warm is None:
            # a warm-up is no conversation: no tape (its text may come from another's)
            self.rewriter.commit(plan, reply=ex.observer.text)
            if lease.prompt is not None:
                self.ceiling.remember(session_of(plan), lease.prompt, generated)
        if completed and ex.answer is not None and ex.items is not None:
            self.keep_response(ex, plan.identity.principal)

    def close(self, ex: Exchange) -> None:
        """Whatever happened: the body budget, the gate and the slot are given back, and
        the record is written. A prompt still being tokenized is left to its head."""
        ex.hold.release()
        if ex.finishing is not None and not ex.finishing.done():
            ex.finishing.cancel()
        if ex.gate is not None:
            ex.gate.release()
        lease, rec = ex.lease, ex.rec
        if lease is not None and not lease.released:
            # A first byte means the server prefilled the whole prompt: it holds it.
            self.slots.release(lease, completed=False, cached_actual=rec.cached_tokens,
                               prompt_done=rec.ttft_ms is not None)  # fmt: skip
            if rec.prompt_tokens is None and lease.prompt is not None:
                rec.prompt_tokens = len(lease.prompt)
        rec.done()

    # -- helpers ------------------------------------------------------------------------
    def earlier_responses(self, ex: Exchange, body: Any, headers: Mapping[str, str]) -> Any:
        """A Responses body with the stored conversation ``previous_response_id`` names put
        before its input (only the principal that stored it can name it)."""
        if not isinstance(body, dict) or not isinstance(body.get("input", ""), str | list):
            return body
        earlier = body.get("previous_response_id")
        if earlier is not None:
            stored = self.responses.get(str(earlier), principal_of(headers, body.get("user")))
            if stored is None:
                raise NotFound(f"Previous response with id '{earlier}' not found.")
            body = openai_responses.expand(body, stored.items)
        ex.items = openai_responses.as_items(body)
        return body

    async def count_tokens(self, dialect: DialectBase, body: Any, raw_path: str) -> int | None:
        """The prompt tokens of a request as the client sent it, from the first server's
        exact tokenizer; None where kvproxy only estimates (the upstream answers)."""
        server = self.slots.servers[0]
        if not server.tokenizer.exact:
            return None
        try:
            conv = dialect.parse(body, self.messages)
            call = backend_for(server.upstream.kind).call(dialect, conv, raw_path)
        except MALFORMED as exc:
            raise BadRequest(f"malformed request: {type(exc).__name__}") from exc
        bodies = {s.index: call.body for s in self.slots.servers}
        prompts = await self.slots.tokens_for(conv, bodies)
        prompt = prompts.get(server.index)
        return None if prompt is None else len(prompt)

    def keep_response(self, ex: Exchange, owner: str) -> None:
        """A finished response, for a later ``previous_response_id`` (unless ``store`` is
        false) and for ``GET /v1/responses/{id}``."""
        assert ex.answer is not None and ex.items is not None and ex.conv is not None
        if ex.conv.extra.get("store") is False:
            return
        items = [*ex.items, *openai_responses.output_items(ex.answer)]
        self.responses.put(StoredResponse(owner, ex.answer, items))

    def calls_for(self, dialect: DialectBase, conv: Conversation, raw_path: str) -> Calls:
        return {server.index: backend_for(server.upstream.kind).call(dialect, conv, raw_path)
                for server in self.slots.servers}  # fmt: skip

    def over_budget(self, prompts: dict[int, Prompt | None], reserve: int) -> bool:
        """Whether a prompt leaves less than ``reserve`` tokens of some slot's context."""
        for server in self.slots.servers:
            prompt = prompts.get(server.index)
            if prompt is not None and server.n_ctx and len(prompt) > server.n_ctx - reserve:
                return True
        return False


def cache_header(lease: Lease) -> dict[str, str]:
    """Known before the first byte, so it carries the prediction; the record and the
    OpenAI usage carry the server's own figure."""
    prompt = len(lease.prompt) if lease.prompt is not None else "?"
    return {
        CACHE_HEADER: f"cached={lease.route.predicted}; prompt={prompt}; slot={lease.slot_label}"
    }


def note_route(rec: RequestRecord, lease: Lease) -> None:
    rec.upstream = lease.server.upstream.name
    rec.slot = lease.slot_label
    rec.predicted_cached = lease.route.predicted if lease.prompt is not None else None
    rec.route_reason = lease.route.reason
    rec.queued_ms = round(lease.queued_ms, 1) if lease.queued_ms >= 1 else None
    rec.restored = lease.restored
    rec.estimated = lease.estimated


def note_rewrite(rec: RequestRecord, plan: Plan, original_cached: int | None) -> None:
    rec.rewrite = list(plan.applied)
    rec.rewrite_cause = plan.cause
    rec.rewrite_refused = plan.refused
    rec.lineage = plan.tape.lineage if plan.tape is not None else None
    rec.messages = len(plan.original.messages) if plan.original.kind == "chat" else None
    rec.original_predicted = original_cached
    if original_cached is not None and rec.predicted_cached is not None:
        rec.rewrite_saved_predicted = rec.predicted_cached - original_cached


def note_outcome(rec: RequestRecord, lease: Lease) -> None:
    """Server figures for ollama are estimates: prompt_eval_count counts only the tokens
    it evaluated, so cached = estimated prompt - evaluated."""
    if lease.estimated and lease.prompt is not None and rec.prompt_tokens is not None:
        evaluated = rec.prompt_tokens
        rec.prefilled_tokens = evaluated
        rec.prompt_tokens = max(len(lease.prompt), evaluated)
        rec.cached_tokens = rec.prompt_tokens - evaluated
    if lease.prompt is not None and rec.prompt_tokens is None and rec.status == 200:
        rec.prompt_tokens = len(lease.prompt)
    rec.miss = miss_cause(lease, rec.cached_tokens, rec.prompt_tokens)
    if rec.rewrite_cause and (rec.miss or rec.cached_tokens == 0):
        token = rec.miss.token if rec.miss is not None else rec.cached_tokens
        rec.miss = replace(rec.rewrite_cause, token=token)
    if rec.original_predicted is not None and rec.cached_tokens is not None:
        rec.rewrite_saved = rec.cached_tokens - rec.original_predicted


def snippets(plan: Plan) -> dict[str, str]:
    """Short text for ``kvproxy explain`` (only with --log-content): the newest message and
    the first one that diverged from the tape."""
    messages = plan.original.messages
    out: dict[str, str] = {}
    if messages:
        out["last"] = f"{messages[-1].role}: {messages[-1].text()[:SNIPPET_CHARS]}"
    index = plan.diverged_message
    if index is not None and index < len(messages):
        out["diverged"] = f"{messages[index].role}: {messages[index].text()[:SNIPPET_CHARS]}"
    if plan.original.kind == "completion" and isinstance(plan.original.prompt, str):
        out["prompt"] = plan.original.prompt[-SNIPPET_CHARS:]
    return out
