"""kvproxy's own Prometheus metrics: one registry per Application, fed by finished
records."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from proxy.records.metrics import Metrics
from proxy.slots.read_back import ReadBack


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_the_metric_names() -> None:
    names = {m.name for m in Metrics().registry.collect()}
    assert names == {
        "kvproxy_requests", "kvproxy_prompt_tokens", "kvproxy_cached_tokens",
        "kvproxy_prefilled_tokens", "kvproxy_predictions", "kvproxy_prediction_error_tokens",
        "kvproxy_ttft_seconds", "kvproxy_rewrite_actions", "kvproxy_misses",
        "kvproxy_restores", "kvproxy_upstream_errors",
    }  # fmt: skip


def test_two_applications_count_apart() -> None:
    a, b = Metrics(), Metrics()
    a.observe({"dialect": "openai_chat", "status": 200})
    assert value(a, "kvproxy_requests_total", dialect="openai_chat", status="200") == 1
    assert value(b, "kvproxy_requests_total", dialect="openai_chat", status="200") is None


@pytest.mark.parametrize(
    ("record", "name", "labels", "expected"),
    [
        ({"status": 200, "prompt_tokens": 100}, "kvproxy_prompt_tokens_total", {}, 100),
        ({"status": 200, "cached_tokens": 60}, "kvproxy_cached_tokens_total", {}, 60),
        ({"status": 502}, "kvproxy_upstream_errors_total", {"status": "502"}, 1),
        ({"status": 499}, "kvproxy_upstream_errors_total", {"status": "499"}, None),
        ({"status": None}, "kvproxy_requests_total", {"dialect": "-", "status": "None"}, 1),
        ({"predicted_cached": 50, "cached_tokens": 60},
         "kvproxy_prediction_error_tokens_total", {}, 10),
        ({"predicted_cached": 50, "cached_tokens": 60, "estimated": True},
         "kvproxy_predictions_total", {}, 0),
        ({"rewrite": ["compaction:openclaw", "tools"]},
         "kvproxy_rewrite_actions_total", {"rule": "compaction"}, 1),
        ({"miss_cause": "cold"}, "kvproxy_misses_total", {"cause": "cold"}, 1),
        ({"restored": True}, "kvproxy_restores_total", {}, 1),
        ({"ttft_ms": 1500.0}, "kvproxy_ttft_seconds_sum", {}, 1.5),
    ],
)  # fmt: skip
def test_observe(record: dict[str, Any], name: str, labels: dict[str, str],
                 expected: float | None) -> None:  # fmt: skip
    metrics = Metrics()
    metrics.observe(record)
    assert value(metrics, name, **labels) == expected


def test_gauges_read_the_store_and_the_body_budget_when_scraped() -> None:
    metrics = Metrics()
    store = SimpleNamespace(dropped=1, skipped=2, restarts=3)
    budget = SimpleNamespace(used=10, refused=4)
    metrics.watch_store(store)
    metrics.watch_bodies(budget)
    store.dropped, budget.used = 5, 20
    assert value(metrics, "kvproxy_records_dropped") == 5
    assert value(metrics, "kvproxy_record_writer_restarts") == 3
    assert value(metrics, "kvproxy_body_bytes_inflight") == 20
    assert b"kvproxy_bodies_refused 4.0" in metrics.render()


def test_each_upstreams_learned_restore_cost_is_a_gauge() -> None:
    metrics = Metrics()
    server = SimpleNamespace(upstream=SimpleNamespace(name="gpu"), read_back=ReadBack())
    metrics.watch_read_back([server], 0.1)
    assert value(metrics, "kvproxy_restore_cost_share", upstream="gpu") == 0.1
    server.read_back.prefilled(1000, 1000.0)
    server.read_back.copied(1000, 20.0)
    assert value(metrics, "kvproxy_restore_cost_share", upstream="gpu") == pytest.approx(0.02)
