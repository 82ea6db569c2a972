"""The bound on request bytes held at once, and the length check that spares tokenizing a
prompt that cannot fit (pure)."""

from __future__ import annotations

import pytest

from proxy.core.conversation import Conversation, Message
from proxy.core.errors import Overloaded
from proxy.core.limits import (
    MAX_TOKEN_BYTES,
    PARSED_FACTOR,
    BodyBudget,
    cannot_fit,
    surely_prompted_bytes,
)


def test_a_hold_charges_the_parsed_forms_too() -> None:
    budget = BodyBudget(10_000)
    first = budget.hold()
    first.add(1000)
    first.charge_parsed()
    assert first.size == budget.used == PARSED_FACTOR * 1000
    second = budget.hold()
    second.add(1000)
    second.charge_parsed()
    third = budget.hold()
    third.add(1000)
    with pytest.raises(Overloaded, match="--max-inflight-body-bytes"):
        third.charge_parsed()
    assert budget.refused == 1
    for hold in (first, second, third):
        hold.release()
    assert budget.used == 0


def test_one_body_alone_is_never_refused_for_its_parsed_forms() -> None:
    """Its charge is capped at the whole budget: a body that fits --max-body-bytes and the
    budget goes through when nothing else is in flight."""
    budget = BodyBudget(1000)
    with budget.hold() as hold:
        hold.add(700)
        hold.charge_parsed()
        assert budget.used == 1000
    assert budget.used == 0


def test_the_bytes_a_prompt_surely_holds() -> None:
    chat = Conversation(kind="chat", messages=(
        Message.make("system", "s" * 50), Message.make("user", "héllo"),
        Message.make("assistant", "<think>" + "r" * 500 + "</think>ok"),
        Message.make("user", [{"type": "text", "text": "abc"}, {"type": "image_url"}]),
    ))  # fmt: skip
    # user text only: a template may drop the system message or earlier reasoning
    assert surely_prompted_bytes(chat) == len("héllo".encode()) + 3
    assert surely_prompted_bytes(Conversation(kind="completion", prompt="xyz")) == 3
    assert surely_prompted_bytes(Conversation(kind="completion", prompt=[1, 2])) == 0


@pytest.mark.parametrize(
    ("limit", "held", "n", "refused"),
    [(100, 0, 100, False), (100, 0, 101, True), (100, 60, 40, False), (100, 60, 41, True)],
)
def test_a_hold_is_refused_past_the_budget(limit: int, held: int, n: int, refused: bool) -> None:
    budget = BodyBudget(limit)
    budget.hold().add(held)
    hold = budget.hold()
    if refused:
        with pytest.raises(Overloaded):
            hold.add(n)
        assert (budget.used, budget.refused, hold.size) == (held, 1, 0)
    else:
        hold.add(n)
        assert (budget.used, budget.refused) == (held + n, 0)


PROMPT = "x" * (2 * MAX_TOKEN_BYTES + 1)  # more than 2 tokens can hold, surely


@pytest.mark.parametrize(
    ("contexts", "expected"),
    [([2], True), ([2, 3], False), ([3], False), ([], False), ([2, None], False),
     ([1, 2], True)],
)  # fmt: skip
def test_cannot_fit(contexts: list[int | None], expected: bool) -> None:
    assert cannot_fit(Conversation(kind="completion", prompt=PROMPT), contexts) is expected


def test_only_user_text_counts_towards_cannot_fit() -> None:
    chat = Conversation(kind="chat", messages=(Message.make("system", PROMPT),
                                               Message.make("user", "hi")))  # fmt: skip
    assert cannot_fit(chat, [1]) is False
