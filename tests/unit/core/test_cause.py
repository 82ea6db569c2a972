"""Why a request reused less than it could have: a value stored as record fields."""

from __future__ import annotations

import pytest

from proxy.core.cause import NO_CAUSE, MissCause


@pytest.mark.parametrize(
    ("cause", "text"),
    [(MissCause("cold"), "cold"), (MissCause("diverged", token=12), "diverged at token 12"),
     (MissCause("diverged", token=0), "diverged at token 0"),
     (MissCause("rewrite-skipped", reason="tools: not a list"),
      "rewrite-skipped (tools: not a list)"),
     (MissCause("evicted", token=3, message=1, reason="r"), "evicted at token 3 (r)")],
)  # fmt: skip
def test_a_cause_as_a_person_reads_it(cause: MissCause, text: str) -> None:
    assert str(cause) == text


def test_a_cause_is_stored_as_fields_with_the_same_names_as_no_cause() -> None:
    cause = MissCause("edited-history", token=5, message=2, reason=None)
    assert cause.fields() == {"miss_cause": "edited-history", "miss_token": 5,
                              "miss_message": 2, "miss_reason": None}  # fmt: skip
    assert set(cause.fields()) == set(NO_CAUSE) and not any(NO_CAUSE.values())


def test_causes_are_values() -> None:
    assert MissCause("cold") == MissCause("cold") and MissCause("cold") != MissCause("evicted")
    assert len({MissCause("cold"), MissCause("cold")}) == 1
