"""The saved-file catalog, the evicted prefixes and the best known prefix, one table per
decision."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.core.prefix_index import Prompt
from proxy.slots.catalog import Ghosts, Known, SavedCatalog, SavedFile, known_best
from proxy.slots.routing import SlotView

P = Prompt.of(range(100))


def f(name: str, size: int = 100, deletable: bool = True) -> SavedFile:
    return SavedFile(name, 0, size, deletable)


@pytest.mark.parametrize(
    ("existing", "new", "budget", "dropped", "kept"),
    [
        # a deletable file holding a prefix of the new one is superseded
        ([(f("a"), range(500))], (f("b"), range(800)), 1000, [("a", False)], ["b"]),
        # ... an undeletable one stays (and stays counted)
        ([(f("a", deletable=False), range(500))], (f("b"), range(800)), 1000, [], ["a", "b"]),
        # not a prefix: both stay
        ([(f("a"), range(1, 500))], (f("b"), range(800)), 1000, [], ["a", "b"]),
        # over budget: least recently used deletable files go, evicted
        ([(f("a"), range(1, 99)), (f("c"), range(2, 99))], (f("b"), range(800)), 250,
         [("a", True)], ["c", "b"]),
        ([(f("a", deletable=False), range(1, 99)), (f("c"), range(2, 99))],
         (f("b"), range(800)), 250, [("c", True)], ["a", "b"]),
    ],
)  # fmt: skip
def test_catalog_add(existing, new, budget, dropped, kept) -> None:  # type: ignore[no-untyped-def]
    catalog = SavedCatalog(budget)
    for file, tokens in existing:
        catalog.load(file, Prompt.of(tokens))
    drops = catalog.add(new[0], Prompt.of(new[1]))
    assert [(d.file.name, d.evicted) for d in drops] == dropped
    assert list(catalog.files) == kept


@pytest.mark.parametrize(
    ("stuck", "deletable", "room"),
    [(0, False, True), (150, False, True), (250, False, False), (250, True, True)],
)
def test_catalog_room(stuck: int, deletable: bool, room: bool) -> None:
    catalog = SavedCatalog(200)
    if stuck:
        catalog.load(f("x", stuck, deletable=False), P)
    assert catalog.has_room(deletable) is room


def test_catalog_best_and_touch() -> None:
    catalog = SavedCatalog(1000)
    catalog.load(f("a"), Prompt.of(range(300)))
    catalog.load(f("b"), Prompt.of(range(600)))
    best = catalog.best(Prompt.of(range(700)))
    assert best is not None and (best.name, best.cached) == ("b", 600)
    catalog.touch("a")
    assert list(catalog.files) == ["b", "a"]
    assert catalog.best(Prompt.of(range(5, 700))) is None


def test_ghosts_keep_the_newest() -> None:
    ghosts = Ghosts(limit=2)
    for i in range(3):
        ghosts.add(i, Prompt.of(range(i * 1000, i * 1000 + 64)))
    assert ghosts.index.keys() == [1, 2]


@pytest.mark.parametrize(
    ("live", "saved", "evicted", "known"),
    [
        (0, 0, 0, Known(0, "live", 0)),
        (500, 300, 0, Known(500, "live", 500)),
        (100, 640, 0, Known(640, "saved", 640)),
        (100, 320, 960, Known(960, "evicted", 960)),
    ],
)
def test_known_best(live: int, saved: int, evicted: int, known: Known) -> None:
    prompt = Prompt.of(range(2000))
    views = [SlotView(0, 0, cached=live, held=live)]
    catalog, ghosts = SavedCatalog(1 << 20), Ghosts()
    if saved:
        catalog.load(f("s"), Prompt.of(range(saved)))
    if evicted:
        ghosts.add("g", Prompt.of(range(evicted)))
    assert known_best(prompt, views, catalog, ghosts) == known


@pytest.mark.parametrize(
    ("files", "prompt", "whole", "expected"),
    [
        # dense: the longest common prefix of any file
        (
            {"b": [*range(2000), *range(9000, 9500)], "a": range(1000)},
            range(2400),
            False,
            ("b", 2000),
        ),
        # recurrent: only a file the prompt extends whole (measured: a restored file
        # resumes all of it when the prompt extends it, nothing when it diverges)
        (
            {"b": [*range(2000), *range(9000, 9500)], "a": range(1000)},
            range(2400),
            True,
            ("a", 1000),
        ),
        ({"a": range(1000)}, range(1000), True, None),  # no new token: nothing to resume
        ({"b": [*range(2000), *range(9000, 9500)]}, range(2400), True, None),
    ],
)
def test_the_best_saved_file_by_attention_kind(
    files: dict[str, Any], prompt: Any, whole: bool, expected: tuple[str, int] | None
) -> None:
    catalog = SavedCatalog(1 << 30)
    for name, tokens in files.items():
        catalog.add(SavedFile(name, 0, 10), Prompt.of(tokens))
    best = catalog.best(Prompt.of(prompt), whole=frozenset({0}) if whole else frozenset())
    assert (None if best is None else (best.name, best.cached)) == expected
