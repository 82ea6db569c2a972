"""kvproxy's own Prometheus metrics, fed by the same finished records as the store.

One ``CollectorRegistry`` per Application (no process-global registry), served at
``/metrics``; the upstream's own metrics stay reachable at ``/upstream/metrics``.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "kvproxy_requests_total", "Dialect requests finished", ["dialect", "status"],
            registry=r,
        )  # fmt: skip
        self.prompt = Counter("kvproxy_prompt_tokens_total", "Prompt tokens", registry=r)
        self.cached = Counter(
            "kvproxy_cached_tokens_total", "Prompt tokens the server reused", registry=r
        )
        self.prefilled = Counter(
            "kvproxy_prefilled_tokens_total", "Prompt tokens the server computed", registry=r
        )
        self.predictions = Counter(
            "kvproxy_predictions_total", "Requests with a prediction and the server's figure",
            registry=r,
        )  # fmt: skip
        self.prediction_error = Counter(
            "kvproxy_prediction_error_tokens_total",
            "Sum of |predicted - actual| cached tokens", registry=r,
        )  # fmt: skip
        self.ttft = Histogram(
            "kvproxy_ttft_seconds", "Time to the first byte to the client", buckets=TTFT_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.rewrites = Counter(
            "kvproxy_rewrite_actions_total", "Rewrite rules applied", ["rule"], registry=r
        )
        self.misses = Counter("kvproxy_misses_total", "Misses by cause", ["cause"], registry=r)
        self.restores = Counter(
            "kvproxy_restores_total", "Saved prefixes restored into a slot", registry=r
        )
        self.upstream_errors = Counter(
            "kvproxy_upstream_errors_total", "Requests answered 5xx", ["status"], registry=r
        )

    def watch_store(self, store: Any) -> None:
        """The record writer's loss counters, read when scraped."""
        for name, attr, text in (
            ("kvproxy_records_dropped", "dropped", "Records and state dropped: queue full"),
            ("kvproxy_records_skipped", "skipped", "Records and state that could not be stored"),
            ("kvproxy_record_writer_restarts", "restarts", "Record writer restarts"),
        ):
            Gauge(name, text, registry=self.registry).set_function(
                lambda attr=attr: getattr(store, attr)
            )

    def watch_bodies(self, budget: Any) -> None:
        Gauge("kvproxy_body_bytes_inflight", "Request body bytes held now",
              registry=self.registry).set_function(lambda: budget.used)  # fmt: skip
        Gauge("kvproxy_bodies_refused", "Requests refused: --max-inflight-body-bytes reached",
              registry=self.registry).set_function(lambda: budget.refused)  # fmt: skip

    def watch_read_back(self, servers: list[Any], default: float) -> None:
        """Each upstream's learned cost of reading a slot back, as a share of prefilling
        it (``proxy.slots.read_back``; ``default`` until its timings are known)."""
        gauge = Gauge("kvproxy_restore_cost_share", "Reading a slot back, as a share of "
                      "prefilling it, learned from the server's timings", ["upstream"],
                      registry=self.registry)  # fmt: skip
        for server in servers:
            gauge.labels(server.upstream.name).set_function(
                lambda server=server: server.read_back.share(default)
            )

    def observe(self, record: dict[str, Any]) -> None:
        """Count one finished request (a RequestRecord's fields)."""
        status = record.get("status")
        self.requests.labels(record.get("dialect") or "-", str(status)).inc()
        if isinstance(status, int) and status >= 500:
            self.upstream_errors.labels(str(status)).inc()
        for counter, key in (
            (self.prompt, "prompt_tokens"),
            (self.cached, "cached_tokens"),
            (self.prefilled, "prefilled_tokens"),
        ):
            if record.get(key):
                counter.inc(record[key])
        predicted, actual = record.get("predicted_cached"), record.get("cached_tokens")
        if predicted is not None and actual is not None and not record.get("estimated"):
            self.predictions.inc()
            self.prediction_error.inc(abs(predicted - actual))
        if record.get("ttft_ms") is not None:
            self.ttft.observe(record["ttft_ms"] / 1000)
        for rule in record.get("rewrite") or ():
            self.rewrites.labels(rule.split(":")[0]).inc()
        if record.get("miss_cause"):
            self.misses.labels(record["miss_cause"]).inc()
        if record.get("restored"):
            self.restores.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
