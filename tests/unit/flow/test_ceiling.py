"""The ceiling: leading prompt tokens a session already sent or was answered before."""

from __future__ import annotations

import pytest

from proxy.core.prefix_index import Prompt
from proxy.flow.ceiling import SessionCeiling, client_label, session_of
from proxy.rewrite.identity import Identity

SYSTEM = list(range(1000, 1300))


def p(*parts: list[int]) -> Prompt:
    return Prompt.of([t for part in parts for t in part])


def test_a_session_reaches_what_it_sent_and_was_answered_never_another_sessions() -> None:
    c = SessionCeiling()
    first = p(SYSTEM, [1, 2, 3])
    assert c.reached("a", first) == 0  # nothing sent yet
    c.remember("a", first, generated=[7, 8])
    assert c.reached("a", p(SYSTEM, [1, 2, 3, 7, 8, 4])) == 305  # prompt and reply
    assert c.reached("a", p(SYSTEM, [9])) == 300  # an edit: the shared part
    assert c.reached("b", first) == 0  # another session's prompt is not this one's


def test_short_prompts_and_the_bounds() -> None:
    c = SessionCeiling(max_sessions=2, per_session=2)
    c.remember("a", p([1, 2, 3]), None)
    assert c.reached("a", p([1, 2, 3, 4])) == 3  # under one block: compared directly
    for key in ("b", "c"):
        c.remember(key, p([5]), None)
    assert c.reached("a", p([1, 2, 3])) == 0  # the least recent session went
    for tail in ([1], [2], [3]):
        c.remember("c", p(SYSTEM, tail), None)
    assert c.reached("c", p(SYSTEM, [1])) == 300  # its oldest sequence went, not its prefix


@pytest.mark.parametrize(("agent", "label"), [
    ("claude-cli/2.1.328 (external, sdk-cli)", "claude-cli/2.1.328"),
    ("codex_exec/0.169.0 (Debian 12; x86_64)", "codex_exec/0.169.0"),
    ("", None), ("(weird)", None),
])  # fmt: skip
def test_the_client_is_the_user_agents_first_product(agent: str, label: str | None) -> None:
    assert client_label({"User-Agent": agent}) == label


class Plan:
    def __init__(self, identity: Identity, lineage: str | None) -> None:
        self.identity = identity
        self.tape = type("T", (), {"lineage": lineage})() if lineage else None


def test_the_session_is_named_or_the_conversation() -> None:
    assert session_of(Plan(Identity("p", "s"), "l")) == "p|s"
    assert session_of(Plan(Identity("p", None), "l")) == "p|l"
    assert session_of(Plan(Identity("q", "s"), "l")) != session_of(Plan(Identity("p", "s"), "l"))
