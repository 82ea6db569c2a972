"""No oracle (issue 21): a principal reuses only what its own requests wrote (or a warm-up
prefix shared on purpose), so no cached-token figure it sees measures another's content."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.core.conversation import Conversation
from proxy.core.prefix_index import Prompt
from proxy.slots.catalog import SavedCatalog, SavedFile
from proxy.slots.manager import SlotManager
from proxy.slots.routing import RoutePolicy
from proxy.slots.servers import ServerSlots
from proxy.slots.table import PUBLIC, SlotTable, visible
from tests.unit.slots.fakes import ListTokenizer, NoServer

VICTIM, ATTACKER = "victim", "attacker"
SECRET = list(range(2000))


@pytest.mark.parametrize(
    ("owner", "principal", "expected"),
    [
        ("a", "a", True),
        ("a", "b", False),
        (PUBLIC, "b", True),
        (None, "b", False),  # unknown content (an older run's) is nobody's to reuse
        ("a", None, True),  # kvproxy's own view
    ],
)
def test_visible(owner: str | None, principal: str | None, expected: bool) -> None:
    assert visible(owner, principal) is expected


def test_a_slot_shows_nothing_shared_to_another_principal() -> None:
    table = SlotTable(0, 1)
    table.settle(0, Prompt.of(SECRET), 1.0, owner=VICTIM)
    probe = Prompt.of([*SECRET[:1500], 9, 9, 9])
    assert table.views(probe, VICTIM)[0].cached == 1500
    assert table.views(probe, ATTACKER)[0].cached == 0
    assert table.isolated(0, ATTACKER) and not table.isolated(0, VICTIM)


def test_a_saved_file_is_restored_only_for_its_owners() -> None:
    catalog = SavedCatalog(1 << 30)
    catalog.add(SavedFile("f", 0, 10), Prompt.of(SECRET), VICTIM)
    probe = Prompt.of([*SECRET[:1500], 9])
    found = catalog.best(probe, principal=VICTIM)
    assert found is not None and found.cached >= 1500
    assert catalog.best(probe, principal=ATTACKER) is None
    catalog.add(SavedFile("w", 0, 10), Prompt.of(SECRET[:512]), PUBLIC)
    shared = catalog.best(probe, principal=ATTACKER)
    assert shared is not None and shared.name == "w"


def test_a_file_dropped_is_forgotten_by_every_owner() -> None:
    catalog = SavedCatalog(15)
    catalog.add(SavedFile("f", 0, 10), Prompt.of(SECRET), VICTIM)
    catalog.add(SavedFile("g", 0, 10), Prompt.of(list(range(5000, 6000))), VICTIM)
    assert "f" not in catalog and catalog.best(Prompt.of(SECRET), principal=VICTIM) is None


def manager(slots: int = 1) -> SlotManager:
    server = ServerSlots(0, NoServer(), ListTokenizer(), slots, 8192, can_save=False)  # type: ignore[arg-type]
    return SlotManager([server], RoutePolicy(), 1 << 30, clock=iter(range(1, 10_000)).__next__)


async def lease_for(m: SlotManager, tokens: list[int], owner: str) -> Any:
    prompts = await m.tokens_for(Conversation(kind="chat"), {0: {"tokens": tokens}})
    return await m.acquire_prompts(prompts, owner)


async def test_another_principals_probe_is_predicted_zero_and_isolated() -> None:
    m = manager()
    lease = await lease_for(m, SECRET, VICTIM)
    m.release(lease, completed=True, generated=[], finish_reason="stop")
    probe = await lease_for(m, [*SECRET[:1500], 7], ATTACKER)
    assert probe.route.predicted == 0 and probe.isolated
    m.release(probe, completed=True, generated=[], finish_reason="stop", cached_actual=0)
    again = await lease_for(m, [*SECRET, 1, 2], VICTIM)
    assert again.isolated  # the attacker's prompt holds the slot now
    m.release(again, completed=True, generated=[], finish_reason="stop", cached_actual=0)
    mine = await lease_for(m, [*SECRET, 1, 2, 3], VICTIM)
    assert mine.route.predicted == len(SECRET) + 2 and not mine.isolated


async def test_a_warm_prefix_is_shared_with_everybody() -> None:
    m = manager()
    warm = await lease_for(m, SECRET[:1024], PUBLIC)
    m.release(warm, completed=True, generated=[], finish_reason="stop")
    lease = await lease_for(m, [*SECRET[:1024], 5, 6], ATTACKER)
    assert lease.route.predicted == 1024 and not lease.isolated


def test_a_warm_up_slot_is_public_to_the_router() -> None:
    """A warm-up prefix has no session of its own to come back: free to give up (routing)."""
    table = SlotTable(0, 2)
    table.settle(0, Prompt.of(SECRET), 1.0, owner=PUBLIC)
    table.settle(1, Prompt.of(SECRET), 1.0, owner=VICTIM)
    assert [v.public for v in table.views(None, ATTACKER)] == [True, False]
