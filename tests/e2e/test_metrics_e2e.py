"""kvproxy's own /metrics: Prometheus text that prometheus-client parses, counters moving
as requests pass through the real server."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Proxy

pytestmark = pytest.mark.e2e


def samples(proxy: Proxy) -> dict[tuple[str, tuple], float]:
    resp = httpx.get(proxy.url + "/metrics", timeout=10)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_counters_move_as_requests_pass(proxy: Proxy) -> None:
    before = samples(proxy)
    body = {"messages": [{"role": "user", "content": "Count: one, two"}], "max_tokens": 3}
    for _ in range(2):
        assert httpx.post(proxy.url + "/v1/chat/completions", json=body, timeout=60).is_success
    after = samples(proxy)
    key = ("kvproxy_requests_total", (("dialect", "openai_chat"), ("status", "200")))
    assert after[key] - before.get(key, 0) == 2
    for name in ("kvproxy_prompt_tokens_total", "kvproxy_cached_tokens_total",
                 "kvproxy_predictions_total"):  # fmt: skip
        assert after[(name, ())] > before.get((name, ()), 0)
    assert after[("kvproxy_ttft_seconds_count", ())] >= 2
    assert ("kvproxy_prediction_error_tokens_total", ()) in after
