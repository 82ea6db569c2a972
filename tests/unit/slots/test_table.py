"""The slot table and its rules, one table per decision."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.core.prefix_index import Prompt
from proxy.slots.table import (
    CutBack,
    Outcome,
    SlotTable,
    held_after,
    save_name,
)

P = Prompt.of(range(100))


@pytest.mark.parametrize(
    ("outcome", "predicted", "holds"),
    [
        (Outcome(True, (1, 2, 3), "stop"), 0, 103),  # EOG never fed back, the rest is
        (Outcome(True, (1, 2, 3), "eos"), 0, 103),
        (Outcome(True, (1, 2, 3), "length"), 0, 102),  # last sampled token not fed back
        (Outcome(True, None, "stop"), 0, 100),  # reply not tokenizable here: prompt only
        (Outcome(False, cached_actual=40), 90, 40),  # interrupted: what the server reused
        (Outcome(False), 90, 90),  # ... or what was predicted
        (Outcome(False, prompt_done=True), 10, 100),  # a first byte: the whole prompt
        (Outcome(False, cached_actual=-5), 90, 0),
    ],
)
def test_held_after(outcome: Outcome, predicted: int, holds: int) -> None:
    assert len(held_after(P, outcome, predicted)) == holds


def table_with(tokens: int, saved_len: int = 0, busy: int = 0, last_used: float = 1.0) -> SlotTable:
    table = SlotTable(0, 2)
    table.put(0, Prompt.of(range(tokens)))
    table.states[0].saved_len, table.states[0].busy = saved_len, busy
    table.states[0].last_used = last_used
    return table


@pytest.mark.parametrize(
    ("saved_len", "holds", "expect"),
    [
        (500, range(600), 500),  # extended: the file still covers its prefix
        (500, range(300), 0),  # cut inside the saved part: the file no longer matches it
        (500, [*range(400), 9999], 0),  # diverged inside the saved part
        (500, None, 0),  # unknown content
    ],
)
def test_saved_len_survives_only_extensions(saved_len: int, holds: Any, expect: int) -> None:
    table = table_with(500, saved_len=saved_len, busy=1)
    table.settle(0, Prompt.of(holds) if holds is not None else None, 5.0)
    assert (table.states[0].saved_len, table.states[0].busy) == (expect, 0)
    assert table.states[0].last_used == 5.0


@pytest.mark.parametrize(
    ("now_holds", "saved", "expect"),
    [
        (range(500), range(500), 500),
        (range(700), range(500), 500),  # extended while the save ran
        (range(200, 900), range(500), 0),  # replaced while the save ran
    ],
)
def test_a_finished_save_covers_what_the_slot_still_shares(now_holds, saved, expect) -> None:  # type: ignore[no-untyped-def]
    table = SlotTable(0, 1)
    table.put(0, Prompt.of(now_holds))
    table.saved(0, Prompt.of(saved))
    assert table.states[0].saved_len == expect


@pytest.mark.parametrize(
    ("server", "busy", "cuts", "left"),
    [
        ([{"id": 0, "n_prompt_tokens": 500}], 0, [], 500),
        ([{"id": 0, "n_prompt_tokens": 499}], 0, [], 500),  # within the reply slack
        ([{"id": 0, "n_prompt_tokens": 100}], 0, [CutBack(0, 500, 100)], 100),
        ([{"id": 0, "n_prompt_tokens": 0}], 0, [CutBack(0, 500, 0)], 0),  # restarted
        ([{"id": 0}], 0, [CutBack(0, 500, 0)], 0),
        ([{"id": 0, "n_prompt_tokens": 0}], 1, [], 500),  # in flight: left alone
        ([{"id": 0, "n_prompt_tokens": 0, "is_processing": True}], 0, [], 500),
        ([{"id": 7, "n_prompt_tokens": 0}, "x", {"id": "0"}], 0, [], 500),  # not ours
        ([{"id": 0, "n_prompt_tokens": "many"}], 0, [], 500),
        ({"error": "no slots endpoint"}, 0, [], 500),
    ],
)
def test_reconcile_with_the_servers_slots(server: Any, busy: int, cuts: list, left: int) -> None:
    table = table_with(500, saved_len=300, busy=busy)
    assert table.reconcile(server) == cuts
    held = table.held.get(0)
    assert (len(held) if held is not None else 0) == left
    assert table.states[0].saved_len == min(300, left)


@pytest.mark.parametrize(
    ("tokens", "saved_len", "busy_other", "now", "expect"),
    [
        (1000, 0, 0, 10.0, [0]),
        (1000, 900, 0, 10.0, []),  # less than min_tokens unsaved
        (1000, 0, 0, 2.0, []),  # not idle long enough
        (1000, 0, 1, 10.0, []),  # a request on the other slot: the save would delay it
    ],
)
def test_which_slots_an_idle_checkpoint_saves(tokens, saved_len, busy_other, now, expect) -> None:  # type: ignore[no-untyped-def]
    table = table_with(tokens, saved_len=saved_len)
    table.states[1].busy = busy_other
    assert table.to_checkpoint(now, idle_seconds=5.0, min_tokens=256) == expect


def test_save_names_follow_content() -> None:
    assert save_name(Prompt.of(range(100))) == save_name(Prompt.of(list(range(100))))
    assert save_name(Prompt.of(range(100))) != save_name(Prompt.of(range(1, 101)))
    assert save_name(Prompt.of([])) is None


@pytest.mark.parametrize(
    ("shared", "held", "tail", "reused"),
    [
        (1500, 2000, None, 1500),  # dense: any common prefix
        (10, 2000, None, 10),
        (2000, 2000, 512, 2000),  # sliding window: an append
        (1900, 2000, 512, 1900),  # a divergence within the last micro-batch past the window
        (1500, 2000, 512, 1500),  # (Gemma 3 270M: 1500 of 2000 reused)
        (1480, 2000, 512, 0),  # ... further back: nothing (measured: 0)
        (200, 2000, 512, 0),
    ],
)
def test_reuse_by_attention_kind(shared: int, held: int, tail: int | None, reused: int) -> None:
    from proxy.slots.table import reusable

    assert reusable(shared, held, tail) == reused


def test_a_sliding_window_slot_predicts_nothing_for_a_divergence_far_back() -> None:
    table = SlotTable(0, 1, swa_tail=512)
    table.put(0, Prompt.of(range(2000)))
    far = Prompt.of([*range(1000), *range(50_000, 51_000)])
    near = Prompt.of([*range(1600), *range(50_000, 50_400)])
    assert table.views(far)[0].cached == 0
    assert table.views(near)[0].cached == 1600


@pytest.mark.parametrize(
    ("shared", "held", "checkpoints", "reused"),
    [
        # measured on Gemma 3 270M holding 3,000 tokens (checkpoints at 2,484 and 2,996)
        (2490, 3000, [2484, 2996], 2490),  # in the last 512: the window is still cached
        (2485, 3000, [2484, 2996], 2483),  # the checkpoint taken after 2,484 tokens
        (2000, 3000, [2484, 2996], 0),  # no checkpoint at or before it
        # a long reply (reasoning stripped next turn): the checkpoint 4 before the prompt end
        (2010, 2800, [1484, 1996], 1995),
        (1995, 2800, [1484, 1996], 1995),  # its last position (1,995) is still shared
        (1994, 2800, [1484, 1996], 1483),
        # the checkpoint after the BOS alone (the first user message starts at 1) resumes
        # at 1 (measured on Gemma 3 270M: another conversation on the slot reused 1)
        (40, 2800, [1, 1484, 1996], 1),
        (0, 2800, [1, 1484, 1996], 0),
    ],
)
def test_reuse_through_context_checkpoints(shared: int, held: int, checkpoints: list[int],
                                           reused: int) -> None:  # fmt: skip
    from proxy.slots.table import reusable

    assert reusable(shared, held, 512, checkpoints) == reused


@pytest.mark.parametrize(
    ("kept", "prompt_len", "reused", "after"),
    [
        ([], 3000, 0, [2484, 2996]),  # a fresh prompt: both end checkpoints
        # an append: its first batch ends near the prompt's end, so a checkpoint is taken
        # where it starts, and one 4 before the end
        ([2484, 2996], 3050, 3000, [2484, 2996, 3000, 3046]),
        ([2484, 2996], 3200, 2483, [2484, 2684, 3196]),  # resumed from 2,484: later ones erased
        ([2484, 2996], 1000, 0, [484, 996]),  # prefilled from scratch
        ([], 3, 0, []),  # too short for either
    ],
)
def test_checkpoints_after_a_prompt(kept: list[int], prompt_len: int, reused: int,
                                    after: list[int]) -> None:  # fmt: skip
    from proxy.slots.table import checkpoints_after

    assert checkpoints_after(kept, prompt_len, reused, 512) == after


@pytest.mark.parametrize(
    ("kept", "prompt_len", "reused", "starts", "after"),
    [
        # the system folded into the first user turn (Gemma): the first user message starts
        # after the BOS, so the first batch is the BOS alone and a checkpoint follows it;
        # the last user message always gets one; others only min_step past the newest
        ([], 3000, 0, [1, 1200, 2000], [1, 2000, 2484, 2996]),
        ([], 3000, 0, [1], [1, 2484, 2996]),
        ([], 30000, 0, [1, 9000, 9500, 20000, 29000], [1, 9000, 20000, 29000, 29484, 29996]),
        # an append after a reply: the new user message is the last one
        # (its first batch, up to that message, ends near the prompt's end: one there too)
        ([1, 2484, 2996], 3400, 3050, [1, 3060], [1, 2484, 2996, 3050, 3060, 3396]),
        # batches cut by the batch size alone (at 2,048 and 4,096) start no checkpoint
        ([], 5000, 0, [], [4484, 4996]),
    ],
)
def test_checkpoints_at_user_message_starts(
    kept: list[int], prompt_len: int, reused: int, starts: list[int], after: list[int]
) -> None:
    from proxy.slots.table import checkpoints_after

    assert checkpoints_after(kept, prompt_len, reused, 512, starts) == after


@pytest.mark.parametrize(
    ("tokens", "marker", "starts"),
    [
        ([2, 105, 2364, 107, 9, 106, 107, 105, 2364, 107], [105, 2364], [1, 7]),
        ([105, 2364, 105, 2364], [105, 2364], [0, 2]),
        ([1, 2, 3], [], []),
        ([1, 2], [1, 2, 3], []),
        ([0x01000000, 0x00000001], [1], [1]),  # only whole tokens match, not byte offsets
    ],
)
def test_user_starts(tokens: list[int], marker: list[int], starts: list[int]) -> None:
    from proxy.slots.table import user_starts

    assert user_starts(tokens, marker) == starts


def test_a_sliding_window_slot_learns_its_checkpoints_from_each_request() -> None:
    table = SlotTable(0, 1, swa_tail=512)
    table.reserve(0, 1.0)
    table.settle(0, Prompt.of(range(3001)), 2.0, processed=(Prompt.of(range(3000)), 0))
    assert table.states[0].checkpoints == [2484, 2996]
    diverged = Prompt.of([*range(2485), *range(90_000, 90_500)])
    assert table.views(diverged)[0].cached == 2483
    table.reserve(0, 3.0)
    table.settle(0, None, 4.0)  # unknown content: no checkpoint can be counted on
    assert table.states[0].checkpoints == []


@pytest.mark.parametrize(
    ("now_holds", "outcome", "extended", "holds"),
    [
        (P, Outcome(True, (7, 8, 9), "stop"), True, 103),  # still the prompt: reply added
        (P, Outcome(True, (7, 8, 9), "length"), True, 102),  # last sampled token not fed back
        (Prompt.of(range(50)), Outcome(True, (7,), "stop"), False, 50),  # slot moved on
        (Prompt.of(range(101)), Outcome(True, (7,), "stop"), False, 101),
        (None, Outcome(True, (7,), "stop"), False, 0),  # cut back meanwhile
    ],
)
def test_a_reply_learned_later_extends_only_the_same_prompt(
    now_holds: Prompt | None, outcome: Outcome, extended: bool, holds: int
) -> None:
    table = SlotTable(0, 1)
    table.put(0, now_holds)
    assert table.extend(0, P, outcome) is extended
    assert len(table.held.get(0) or ()) == holds


@pytest.mark.parametrize(
    ("filled", "before", "reused", "after", "end"),
    [
        (0, 4700, 4300, 4420, 4700),  # continued at 4,300: what was pruned stays pruned
        (4700, 4420, 4410, 4500, 4700),
        (0, 4700, 3537, 4100, 4100),  # restored a checkpoint: starts over
        (0, 4700, 0, 900, 900),  # prefilled from scratch
        (0, 300, 290, 340, 340),  # short: within the window, nothing pruned either way
    ],
)
def test_how_far_a_sliding_window_slot_was_filled(filled: int, before: int, reused: int,
                                                  after: int, end: int) -> None:  # fmt: skip
    from proxy.slots.table import swa_end_after

    assert swa_end_after(filled, before, reused, after, 512) == end


def test_a_slot_cut_back_still_misses_what_its_window_pruned() -> None:
    """A slot filled to 4,700, then cut back to 4,420 by a request that continued at 4,300:
    the positions its window had pruned (before ~3,676) do not come back, so a prompt
    sharing 4,003 cannot continue there and resumes from a checkpoint."""
    from proxy.slots.table import reusable

    checkpoints = [3538, 4416]
    assert reusable(4003, 4420, 512, checkpoints, 512) == 4003  # what round one predicted
    assert reusable(4003, 4420, 512, checkpoints, 512, filled=4700) == 3537


@pytest.mark.parametrize(
    ("shared", "held", "checkpoints", "new_tokens", "reused"),
    [
        # measured on a Mamba and a Jamba model (tests/synthetic_gguf.py) holding 3,002
        # tokens (a 3,001-token prompt, one reply token fed back; checkpoints after 2,485
        # and 2,997 tokens): the recurrent state is one position, the last one, so only a
        # prompt extending all the slot holds continues there ...
        (3002, 3002, [2485, 2997], True, 3002),
        # ... any other resumes from the newest checkpoint it shares, at that checkpoint
        (3001, 3002, [2485, 2997], True, 2997),
        (2990, 3002, [2485, 2997], True, 2485),
        (2000, 3002, [2485, 2997], True, 0),
        # the same prompt again (no new token): the checkpoint 4 before its end
        (3051, 3052, [2485, 2997, 3047], False, 3047),
        # the checkpoint after the BOS alone resumes at 1
        (40, 3002, [1, 2485], True, 1),
        (0, 3002, [1, 2485], True, 0),
    ],
)
def test_reuse_on_recurrent_and_hybrid_models(shared: int, held: int, checkpoints: list[int],
                                              new_tokens: bool, reused: int) -> None:  # fmt: skip
    from proxy.slots.table import reusable

    assert reusable(shared, held, 512, checkpoints, recurrent=True,
                    new_tokens=new_tokens) == reused  # fmt: skip


def test_a_recurrent_slot_predicts_from_its_checkpoints() -> None:
    table = SlotTable(0, 1, swa_tail=512, recurrent=True)
    table.reserve(0, 1.0)
    table.settle(0, Prompt.of(range(3002)), 2.0, processed=(Prompt.of(range(3001)), 0))
    assert table.states[0].checkpoints == [2485, 2997]
    assert table.views(Prompt.of(range(3100)))[0].cached == 3002
    assert table.views(Prompt.of([*range(2990), *range(90_000, 90_050)]))[0].cached == 2485
    assert table.views(Prompt.of(range(3002)))[0].cached == 2997  # no new token


# Issue 19: nothing unaccounted reaches a slot. The table holds 500 tokens on slot 0, and
# the last /slots read saw task 5 there; ``own``: kvproxy sent a request to the slot since.
@pytest.mark.parametrize(
    ("task", "has", "own", "stale", "foreign", "left"),
    [
        (5, 500, False, False, False, 500),  # the same task: nothing ran since
        (9, 500, False, False, True, 0),  # a task kvproxy did not send overwrote it
        (9, 500, True, False, False, 500),  # kvproxy's own request
        (9, 520, True, False, False, 500),  # its own, with a reply not yet tokenized here
        (9, 520, True, True, True, 0),  # stale (mark_stale): longer than its own could be
        (9, 501, True, True, False, 500),  # stale, within the reply slack: its own
        (None, 500, False, False, False, 500),  # a server that names no task
    ],
)
def test_reconcile_sees_a_task_kvproxy_did_not_send(task: int | None, has: int, own: bool,
                                                    stale: bool, foreign: bool,
                                                    left: int) -> None:  # fmt: skip
    table = table_with(500)
    assert table.reconcile([{"id": 0, "id_task": 5, "n_prompt_tokens": 500}]) == []
    if own:
        table.reserve(0, 2.0)
        table.settle(0, Prompt.of(range(500)), 3.0)
    cuts = table.reconcile([{"id": 0, "id_task": task, "n_prompt_tokens": has}], stale=stale)
    assert cuts == ([CutBack(0, 500, has, foreign=True)] if foreign else [])
    held = table.held.get(0)
    assert (len(held) if held is not None else 0) == left


def test_the_first_task_seen_is_taken_as_it_is() -> None:
    """kvproxy cannot judge a slot before it has read it once (a start with state loaded
    from the previous run)."""
    table = table_with(500)
    assert table.reconcile([{"id": 0, "id_task": 9, "n_prompt_tokens": 500}]) == []
    assert len(table.held.get(0) or ()) == 500


@pytest.mark.parametrize(
    ("has", "settled", "expect"),
    [
        (500, False, [0]),  # the server holds what the table says
        (300, False, []),  # cut back: what the slot holds is not known to be kvproxy's
        (300, True, [0]),  # kvproxy wrote the slot again since
    ],
)
def test_a_slot_cut_back_by_the_server_is_not_checkpointed(has: int, settled: bool,
                                                          expect: list[int]) -> None:  # fmt: skip
    table = table_with(500)
    table.reconcile([{"id": 0, "n_prompt_tokens": has}])
    if settled:
        table.reserve(0, 2.0)
        table.settle(0, Prompt.of(range(400)), 3.0)
    assert table.to_checkpoint(1000.0, 0.0, 1) == expect


@pytest.mark.parametrize(
    ("server", "busy", "unaccounted"),
    [
        ([{"id": 0, "is_processing": False}], 0, False),
        ([{"id": 0, "is_processing": True}], 1, False),  # kvproxy's own request
        ([{"id": 0, "is_processing": True}], 0, True),  # a request kvproxy did not send
        ([{"id": 3, "is_processing": True}, "x"], 0, False),  # not a slot of this table
        ({"error": "x"}, 0, False),
    ],
)
def test_a_request_kvproxy_did_not_send_is_seen_running(server: Any, busy: int,
                                                       unaccounted: bool) -> None:  # fmt: skip
    table = table_with(500, busy=busy)
    assert table.unaccounted(server) is unaccounted
