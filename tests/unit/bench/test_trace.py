"""bench/trace.py's pure parts: the ceiling (longest common prefix with what the session
sent or was answered before), the causes the generator labels, and the plan."""

from __future__ import annotations

import pytest

from bench.trace import Ceiling, Labeler, common_prefix, plan


@pytest.mark.parametrize(
    ("a", "b", "n"),
    [([], [1], 0), ([1, 2, 3], [1, 2, 3], 3), ([1, 2, 3], [1, 2], 2), ([1, 2], [2, 1], 0),
     ([5, 6, 7, 8], [5, 6, 9, 8], 2)],
)  # fmt: skip
def test_common_prefix(a: list[int], b: list[int], n: int) -> None:
    assert common_prefix(a, b) == n


def test_ceiling_counts_the_reply_and_only_the_same_session() -> None:
    ceiling = Ceiling()
    assert ceiling.reach("s", [1, 2, 3]) == 0
    ceiling.remember("s", [1, 2, 3], [4, 5])
    # the next turn appends to prompt + reply: all of it was sent or answered before
    assert ceiling.reach("s", [1, 2, 3, 4, 5, 6, 7]) == 5
    # a reply echoed differently stops the ceiling where it differs
    assert ceiling.reach("s", [1, 2, 3, 4, 9]) == 4
    # another session sent the same tokens: not its ceiling
    assert ceiling.reach("t", [1, 2, 3, 4, 5]) == 0
    # the best of every earlier sequence, not only the newest
    ceiling.remember("s", [1, 8], [])
    assert ceiling.reach("s", [1, 2, 3, 4]) == 4


def test_causes() -> None:
    labels = Labeler(slots=2)
    assert labels.label("a") == "cold"
    assert labels.label("a/sub", subagent=True) == "subagent"
    assert labels.label("a") == "append"  # one other session since: still in a slot
    labels.label("b")
    labels.label("c")
    assert labels.label("a") == "evicted"  # two others since, on two slots
    labels.event("system change", ["a", "b", "never-seen"])
    labels.event("restart", ["a"])
    assert labels.label("a") == "restart"  # the restart wins over the date
    assert labels.label("a") == "append"  # each flag counts once
    assert labels.label("b") == "system change"
    assert labels.label("never-seen") == "cold"
    assert labels.label("c", phase="summarizer") == "summarizer"
    assert labels.label("c", phase="compaction") == "compaction"


def test_plan_is_seeded_and_shaped() -> None:
    specs, steps = plan(7, 16)
    assert len(specs) == 16
    assert sum(1 for s in specs if s.parent) == 4  # one subagent per client
    assert plan(7, 16) == (specs, steps)
    assert plan(8, 16)[1] != steps
    actions = [s.action for s in steps]
    assert actions.count("midnight") == 1 and actions.count("restart") == 1
    assert actions.index("midnight") < actions.index("restart")
    for spec in specs:  # a subagent starts after its parent
        if spec.parent:
            names = [s.session for s in steps]
            assert names.index(spec.parent) < names.index(spec.name)
