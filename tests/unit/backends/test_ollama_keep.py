"""Keeping ollama's cache, the rules as tables (pure): a stable num_ctx per model and a
long enough keep_alive."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.backends.ollama_keep import (
    ContextMemory,
    KeepPolicy,
    keep,
    parse_duration,
    prompt_chars,
)
from proxy.core.errors import BadRequest


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(300, 300.0), ("5m", 300.0), ("1h30m", 5400.0), ("-1", -1.0), ("-1m", -60.0),
     ("300", 300.0), ("250ms", 0.25), ("", None), ("soon", None), (True, None), (None, None)],
)  # fmt: skip
def test_parse_duration(value: Any, seconds: float | None) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    ("client", "sent", "replaced"),
    [
        (None, "30m", None),  # absent: ollama's 5 minutes would apply
        ("5m", "30m", "5m"),
        (0, "30m", 0),  # "unload now" would drop the cache before the next turn
        ("2h", "2h", None),  # longer: the client's
        (-1, -1, None),  # forever: the client's
    ],
)
def test_keep_alive_is_at_least_the_policys(client: Any, sent: Any, replaced: Any) -> None:
    body = {"model": "m", "messages": []} | ({} if client is None else {"keep_alive": client})
    kept = keep(body, KeepPolicy(), ContextMemory(), 0)
    assert kept.body["keep_alive"] == sent and kept.keep_alive_replaced == replaced


def test_num_ctx_stays_what_the_model_runs_at() -> None:
    memory = ContextMemory()
    memory.learn_loaded({"models": [{"name": "qwen2.5:7b", "context_length": 32768}]})
    body = {"model": "qwen2.5:7b", "options": {"num_ctx": 262144, "temperature": 0}}
    kept = keep(body, KeepPolicy(), memory, 100)
    assert kept.body["options"] == {"num_ctx": 32768, "temperature": 0}
    assert kept.num_ctx_replaced == 262144 and body["options"]["num_ctx"] == 262144
    # not loaded: the first value seen for the model becomes its context
    first = keep({"model": "llama3.2", "options": {"num_ctx": 8192}}, KeepPolicy(), memory, 0)
    later = keep({"model": "llama3.2"}, KeepPolicy(), memory, 0)
    assert first.num_ctx_replaced is None and later.body["options"]["num_ctx"] == 8192
    fixed = keep({"model": "x"}, KeepPolicy(num_ctx=16384), ContextMemory(fixed=16384), 0)
    assert fixed.body["options"]["num_ctx"] == 16384
    off = keep(body, KeepPolicy(stable_ctx=False, keep_alive=""), memory, 0)
    assert off.body == body


def test_a_prompt_that_cannot_fit_is_refused() -> None:
    memory = ContextMemory(fixed=4096)
    keep({"model": "m"}, KeepPolicy(num_ctx=4096), memory, 4096 * 5)  # fits at 5 chars a token
    with pytest.raises(BadRequest, match="does not fit the model's context of 4096"):
        keep({"model": "m"}, KeepPolicy(num_ctx=4096), memory, 4096 * 5 + 10)


@pytest.mark.parametrize(
    ("ps", "learned"),
    [({"models": [{"name": "a", "context_length": 4096}]}, {"a": 4096}),
     ({"models": [{"model": "b", "context_length": 8192}]}, {"b": 8192}),
     ({"models": [{"name": "a", "context_length": 0}, {"name": "c"}, "junk"]}, {}),
     ({"models": None}, {}), (None, {}), ([1], {}), ({}, {})],
)  # fmt: skip
def test_learn_loaded_takes_only_sane_entries(ps: Any, learned: dict[str, int]) -> None:
    memory = ContextMemory()
    memory.learn_loaded(ps)
    assert memory.learned == learned


@pytest.mark.parametrize(
    ("policy", "seconds"), [(KeepPolicy(), 1800.0), (KeepPolicy(keep_alive=""), None),
                            (KeepPolicy(keep_alive="1h"), 3600.0)],
)  # fmt: skip
def test_keep_alive_s(policy: KeepPolicy, seconds: float | None) -> None:
    assert policy.keep_alive_s == seconds


def test_prompt_chars_count_what_ollama_prompts() -> None:
    messages = [{"content": "xy", "tool_calls": [2]}, "junk", {"content": None}]
    body = {"prompt": "abc", "system": "de", "tools": [1], "messages": messages}
    assert prompt_chars(body) == 3 + 2 + 2 + len("[2]") + len("[1]")
