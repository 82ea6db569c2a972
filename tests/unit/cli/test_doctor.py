"""``kvproxy doctor``'s findings, one table per topic (``diagnose`` is pure)."""

from __future__ import annotations

import pytest

from proxy.cli.doctor import GIB, Facts, Finding, ModelShape, diagnose, render, seconds_until

QWEN_14B = ModelShape("qwen2", layers=48, kv_heads=8, key_dim=128, value_dim=128,
                      file_bytes=int(8.4 * GIB))  # fmt: skip
SMOLLM = ModelShape("llama", layers=30, kv_heads=3, key_dim=64, value_dim=64,
                    file_bytes=100 * 1024**2)  # fmt: skip
GEMMA3 = ModelShape("gemma3", 18, 1, 256, 256, window=512, file_bytes=240 * 1024**2)


def levels(findings: list[Finding], word: str) -> list[str]:
    return [f.level for f in findings if word in f.text]


def llama(**kw: object) -> Facts:
    base = dict(url="http://x", kind="llama", slots=2, ctx_per_slot=32_768, slot_actions=True,
                endpoint_slots=True, endpoint_metrics=True, model_path="/m.gguf",
                model_readable=True, shape=SMOLLM, ram_bytes=24 * GIB)  # fmt: skip
    base.update(kw)
    return Facts(**base)  # type: ignore[arg-type]


def test_kv_bytes_per_token() -> None:
    assert QWEN_14B.kv_bytes_per_token == 196_608  # 192 KiB a token, f16 K and V
    assert SMOLLM.kv_bytes_per_token == 23_040


@pytest.mark.parametrize(
    ("facts", "word", "expect"),
    [
        (llama(), "slot files", ["ok"]),
        (llama(slot_actions=False), "slot files", ["fix"]),
        (llama(endpoint_slots=False), "/slots", ["warn"]),
        (llama(endpoint_metrics=False), "/metrics", ["warn"]),
        (llama(ctx_per_slot=8192), "slot(s) of", ["fix"]),  # under the client's 32k
        (llama(ctx_per_slot=8192, client_context=8192), "slot(s) of", ["ok"]),
        (llama(model_readable=False), "not readable", ["warn"]),
        # the seeds' cliff: 14B at 32k on 24 GB (6 GiB of KV + 8.4 GiB of weights per slot)
        (llama(shape=QWEN_14B, slots=2), "KV cache", ["fix"]),
        (llama(shape=QWEN_14B, slots=1), "KV cache", ["ok"]),
        (llama(shape=QWEN_14B, slots=1, ram_bytes=16 * GIB), "KV cache", ["fix"]),
        (llama(shape=GEMMA3), "sliding-window", ["warn"]),
        (llama(shape=GEMMA3, swa_full=True), "--swa-full", ["ok"]),
    ],
)
def test_llama_server_findings(facts: Facts, word: str, expect: list[str]) -> None:
    assert levels(diagnose(facts), word) == expect


@pytest.mark.parametrize(
    ("loaded", "keep_alive", "word", "expect"),
    [
        ([], None, "no model is loaded", ["warn"]),
        ([{"name": "qwen2.5:7b", "context_length": 4096}], None, "qwen2.5:7b", ["fix"]),
        ([{"name": "qwen2.5:7b", "context_length": 32768}], None, "qwen2.5:7b", ["ok"]),
        ([{"name": "m"}], 300, "keep_alive", ["warn"]),
        ([{"name": "m"}], 1800, "keep_alive", []),
    ],
)
def test_ollama_findings(loaded: list, keep_alive: int | None, word: str,
                         expect: list[str]) -> None:  # fmt: skip
    facts = Facts(url="http://o", kind="ollama", loaded=loaded, keep_alive_s=keep_alive)
    assert levels(diagnose(facts), word) == expect


@pytest.mark.parametrize(
    ("expires_at", "expect"),
    [("2026-11-23T10:05:00.123456789+00:00", ["warn"]),  # 5 minutes left
     ("2026-11-23T11:00:00Z", []), ("soon", []), (None, [])],
)  # fmt: skip
def test_ollama_unloading_soon(expires_at: str | None, expect: list[str]) -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 11, 23, 10, 0, tzinfo=UTC).timestamp()
    facts = Facts(url="http://o", kind="ollama", now=now,
                  loaded=[{"name": "m", "expires_at": expires_at}])  # fmt: skip
    assert levels(diagnose(facts), "unloads in") == expect


@pytest.mark.parametrize(
    ("stamp", "seconds"),
    [("1970-01-01T00:01:40Z", 100.0), ("1970-01-01T00:01:40.5+00:00", 100.5),
     ("1970-01-01T01:01:40.123456789+01:00", 100.123456), ("soon", None), (None, None),
     (12, None)],
)  # fmt: skip
def test_seconds_until(stamp: object, seconds: float | None) -> None:
    left = seconds_until(stamp, 0.0)
    assert left == (None if seconds is None else pytest.approx(seconds))


def test_recurrent_models_are_warned_about() -> None:
    shape = ModelShape("mamba", 24, 1, 0, 0, recurrent=True)
    assert levels(diagnose(llama(shape=shape, ram_bytes=0)), "recurrent") == ["warn"]


def test_untrusted_props_come_first() -> None:
    findings = diagnose(llama(untrusted=["total_slots 'many' is no count"]))
    assert findings[0].level == "warn" and findings[0].text.startswith("/props:")


def test_render_marks_each_finding_and_its_advice() -> None:
    facts = llama()
    text = render(facts, [Finding("fix", "broken", "mend it"), Finding("ok", "fine")])
    assert text.splitlines() == [text.splitlines()[0], "  [FIX ] broken",
                                 "         -> mend it", "  [ok  ] fine"]  # fmt: skip
    assert "http://x" in text.splitlines()[0]
