"""One request's record: bounded strings, the miss cause as fields, emitted once."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.core.cause import MissCause
from proxy.records.record import MAX_FIELD_CHARS, RequestRecord, bounded


def test_client_strings_in_records_are_bounded() -> None:
    record = RequestRecord(request_id="r", path="/v1/chat/completions", dialect="openai_chat")
    record.model = "m" * 28_000_000
    record.error = "e" * 100_000
    fields = record.fields()
    assert len(fields["model"]) <= MAX_FIELD_CHARS and len(fields["error"]) <= MAX_FIELD_CHARS


@pytest.mark.parametrize(
    ("value", "expected"),
    [("short", "short"), ("x" * MAX_FIELD_CHARS, "x" * MAX_FIELD_CHARS),
     ("x" * (MAX_FIELD_CHARS + 1), "x" * (MAX_FIELD_CHARS - 1) + "…"), (7, 7), (None, None)],
)  # fmt: skip
def test_bounded_cuts_long_strings(value: Any, expected: Any) -> None:
    assert bounded(value) == expected


def test_bounded_cuts_containers_too() -> None:
    assert len(bounded(list(range(100)))) == 64
    assert len(bounded({str(i): i for i in range(100)})) == 32
    assert bounded({"k" * 600: ["v" * 600]}) == {"k" * 511 + "…": ["v" * 511 + "…"]}


def record() -> RequestRecord:
    return RequestRecord(request_id="r", path="/v1/chat/completions", dialect="openai_chat")


def test_fields_store_the_cause_as_fields_and_drop_internals() -> None:
    rec = record()
    rec.miss = MissCause("diverged", token=7, message=2)
    rec.rewrite_cause = MissCause("edited-history")
    fields = rec.fields()
    assert (fields["miss_cause"], fields["miss_token"], fields["miss_message"]) == (
        "diverged", 7, 2)  # fmt: skip
    assert fields["rewrite_cause"] == "edited-history"
    assert "time" in fields and not {"t0", "sink", "miss", "started", "_emitted"} & set(fields)
    assert record().fields()["miss_cause"] is None


def test_absorb_takes_known_fields_that_are_set() -> None:
    rec = record()
    rec.absorb({"cached_tokens": 5, "prompt_tokens": None, "no_such_field": 1})
    assert rec.cached_tokens == 5 and rec.prompt_tokens is None
    assert not hasattr(rec, "no_such_field")


def test_done_emits_once_with_the_decode_rate() -> None:
    sent: list[dict[str, Any]] = []
    rec = record()
    rec.sink = sent.append
    rec.decode_tokens, rec.decode_ms = 10, 500.0
    rec.done()
    rec.done()
    assert len(sent) == 1 and sent[0]["decode_tps"] == 20.0
    assert sent[0]["duration_ms"] is not None
