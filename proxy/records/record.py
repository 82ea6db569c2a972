"""What kvproxy knows about one request, filled in as it passes and emitted exactly once."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from proxy.core.cause import NO_CAUSE, MissCause
from proxy.core.log import get_logger

log = get_logger("kvproxy.request")

# Every string a record holds (model names, paths, error messages, snippets) is cut to this
# many characters, in the store and in the log: a client cannot make records large.
MAX_FIELD_CHARS = 512


def bounded(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_FIELD_CHARS:
        return value[: MAX_FIELD_CHARS - 1] + "…"
    if isinstance(value, dict):
        return {bounded(k): bounded(v) for k, v in list(value.items())[:32]}
    if isinstance(value, list):
        return [bounded(v) for v in value[:64]]
    return value


def new_request_id() -> str:
    return uuid.uuid4().hex[:16]


@dataclass
class RequestRecord:
    request_id: str
    path: str
    dialect: str
    started: float = field(default_factory=time.time)
    t0: float = field(default_factory=time.perf_counter)
    model: str | None = None
    stream: bool = False
    upstream: str | None = None
    upstream_path: str | None = None
    translated: bool = False
    status: int | None = None
    ttft_ms: float | None = None
    duration_ms: float | None = None
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    prefilled_tokens: int | None = None
    prefill_ms: float | None = None
    decode_tokens: int | None = None
    decode_ms: float | None = None
    decode_tps: float | None = None
    slot: str | None = None
    predicted_cached: int | None = None
    route_reason: str | None = None
    queued_ms: float | None = None  # waited in kvproxy's queue for a free slot
    # kvproxy's own time before sending upstream (reading, rewriting, tokenizing, routing),
    # waits for a free slot or the in-flight limit excluded
    overhead_ms: float | None = None
    # An appended turn routed on its remembered leading chunks: the time its new text took
    # to tokenize after dispatch, while the upstream had the request (not in overhead_ms)
    tail_ms: float | None = None
    # ollama upstream: the client's num_ctx / keep_alive where kvproxy sent others
    ollama_replaced: dict[str, Any] | None = None
    warm: str | None = None  # a warm-up request (proxy/warm.py): the warm file's name
    restored: bool = False
    miss: MissCause | None = None  # stored as miss_cause (kind), miss_token, ...
    estimated: bool = False
    lineage: str | None = None
    messages: int | None = None
    snippets: dict[str, str] | None = None  # only with --log-content
    rewrite: list[str] = field(default_factory=list)
    rewrite_cause: MissCause | None = None  # stored as its kind
    rewrite_refused: str | None = None  # the contract check's reason
    original_predicted: int | None = None  # cached tokens the client's own form would get
    rewrite_saved_predicted: int | None = None
    rewrite_saved: int | None = None  # actual cached minus original_predicted
    error: str | None = None
    # Issue 20: how far from the ideal. Leading prompt tokens the session already sent or
    # was answered before (what a cache that never evicted would serve), and who asked:
    # the client's User-Agent product, its session as a short hash.
    ceiling_tokens: int | None = None
    client: str | None = None
    session: str | None = None
    sink: Callable[[dict[str, Any]], None] | None = field(default=None, repr=False)
    _emitted: bool = field(default=False, repr=False)

    def first_byte(self) -> None:
        if self.ttft_ms is None:
            self.ttft_ms = round((time.perf_counter() - self.t0) * 1000, 3)

    def absorb(self, counters: dict[str, Any]) -> None:
        for key, value in counters.items():
            if value is not None and hasattr(self, key):
                setattr(self, key, value)

    def fields(self) -> dict[str, Any]:
        skip = {"t0", "sink", "miss"}
        out = {
            k: getattr(self, k)
            for k in self.__dataclass_fields__
            if not k.startswith("_") and k not in skip
        }
        out["time"] = out.pop("started")
        out.update(self.miss.fields() if self.miss is not None else NO_CAUSE)
        out["rewrite_cause"] = self.rewrite_cause.kind if self.rewrite_cause else None
        return {k: bounded(v) for k, v in out.items()}

    def done(self) -> None:
        """Emit the ``request_done`` event and hand the record to the store; later calls
        are no-ops."""
        if self._emitted:
            return
        self._emitted = True
        self.duration_ms = round((time.perf_counter() - self.t0) * 1000, 3)
        if self.decode_tokens and self.decode_ms:
            self.decode_tps = round(self.decode_tokens / (self.decode_ms / 1000), 2)
        fields = self.fields()
        log.info("request_done", **fields)
        if self.sink is not None:
            self.sink(fields)
