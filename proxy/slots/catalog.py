"""Which saved slot files exist, and what anything ever held: state and decisions, no I/O.

``SavedCatalog`` (the saved slot files, who may restore each, and their disk budget) and
``Ghosts`` (evicted prefixes, for miss causes) only change their own state and return what
must happen (``Drop``: a file to forget, and delete where kvproxy can); the async shell in
``proxy.slots.actions`` performs it. ``known_best`` names the longest prefix of a prompt a
live slot, a saved file or an evicted prefix held, for "diverged at token N".
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from proxy.core.prefix_index import PrefixIndex, Prompt
from proxy.slots.routing import SavedView, SlotView
from proxy.slots.table import PUBLIC

# Evicted prefixes remembered, oldest out, so that a later miss can say "evicted" (a few
# hundred: each holds its tokens).
GHOST_LIMIT = 256


@dataclass(frozen=True)
class SavedFile:
    name: str
    server: int
    size: int
    # kvproxy can delete it (the embedded server's directory, or --slot-dir); an
    # external server's file is not, so it stays counted against the budget for good.
    deletable: bool = True


@dataclass(frozen=True)
class Drop:
    """A saved file to forget, and delete where kvproxy can."""

    file: SavedFile
    prompt: Prompt | None
    evicted: bool  # over the budget (its prefix becomes a ghost), not merely superseded


class SavedCatalog:
    """The saved slot files, least recently used first, bounded by ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.files: OrderedDict[str, SavedFile] = OrderedDict()
        self.index = PrefixIndex()
        # Who may restore each file: the principals whose requests wrote its content
        # (PUBLIC: a warm-up prefix), each with its own index of the files it may use.
        self.owners: dict[str, set[str]] = {}
        self.owned: dict[str, PrefixIndex] = {}

    def owners_of(self, name: str) -> frozenset[str]:
        return frozenset(self.owners.get(name, ()))

    def _own(self, name: str, owner: str | None, prompt: Prompt) -> None:
        if owner is None:
            return
        self.owners.setdefault(name, set()).add(owner)
        self.owned.setdefault(owner, PrefixIndex()).put(name, prompt)

    def _disown(self, name: str) -> None:
        for owner in self.owners.pop(name, ()):
            index = self.owned.get(owner)
            if index is not None:
                index.remove(name)
                if not len(index):
                    del self.owned[owner]

    def __contains__(self, name: object) -> bool:
        return name in self.files

    def __len__(self) -> int:
        return len(self.files)

    def get(self, name: str) -> Prompt | None:
        return self.index.get(name)

    def best(self, prompt: Prompt | None, whole: frozenset[int] = frozenset(),
             principal: str | None = None) -> SavedView | None:  # fmt: skip
        """The file offering ``prompt`` the most cached tokens, among those ``principal``
        may restore (``visible``; None: any). Upstreams in ``whole`` (recurrent models)
        resume a file only when the prompt extends all of it."""
        if prompt is None or not self.files:
            return None
        if principal is None:
            return self._best_in(self.index, prompt, whole)
        found = [self._best_in(self.owned[o], prompt, whole) for o in (principal, PUBLIC)
                 if o in self.owned]  # fmt: skip
        return max((v for v in found if v is not None), key=lambda v: v.cached, default=None)

    def _best_in(self, index: PrefixIndex, prompt: Prompt, whole: frozenset[int]
                 ) -> SavedView | None:  # fmt: skip
        name, n = index.longest(prompt)
        if name is not None and self.files[str(name)].server in whole:
            entry = index.get(name)
            if entry is None or n != len(entry) or n >= len(prompt):
                name, n = None, 0
        if whole and (name is None or n <= 0):
            fits = [(len(entry), key) for key, entry in index.prefixes_of(prompt)
                    if len(entry) < len(prompt)]  # fmt: skip
            if fits:
                n, name = max(fits)
        if name is None or n <= 0:
            return None
        return SavedView(name=str(name), cached=n, server=self.files[str(name)].server)

    def touch(self, name: str) -> None:
        if name in self.files:
            self.files.move_to_end(name)

    def total_bytes(self) -> int:
        return sum(f.size for f in self.files.values())

    def stuck_bytes(self) -> int:
        return sum(f.size for f in self.files.values() if not f.deletable)

    def has_room(self, deletable: bool) -> bool:
        """May a new file be written? Files kvproxy cannot delete count for good: once
        they fill the budget, no more are written there."""
        return deletable or self.stuck_bytes() < self.max_bytes

    def add(self, file: SavedFile, prompt: Prompt, owner: str | None = None) -> list[Drop]:
        """Catalog a new file; returns the files to drop: one it supersedes (a deletable
        file holding a prefix of it), then the least recently used deletable ones while
        the total is over the budget."""
        drops = []
        older, n = self.index.longest(prompt)
        if older is not None and (entry := self.index.get(older)) is not None and n == len(entry):
            old = self.files.get(str(older))
            if old is not None and old.deletable:
                drops.append(self._pop(old.name, evicted=False))
        self.files[file.name] = file
        self.index.put(file.name, prompt)
        self._own(file.name, owner, prompt)
        drops.extend(self.bound())
        return drops

    def bound(self) -> list[Drop]:
        total = self.total_bytes()
        drops = []
        for name, file in list(self.files.items()):
            if total <= self.max_bytes or len(self.files) <= 1:
                break
            if file.deletable:
                total -= file.size
                drops.append(self._pop(name, evicted=True))
        return drops

    def load(self, file: SavedFile, prompt: Prompt, owners: Iterable[str] = ()) -> None:
        self.files[file.name] = file
        self.index.put(file.name, prompt)
        for owner in owners:
            self._own(file.name, owner, prompt)

    def share(self, name: str, owner: str | None) -> None:
        """The same content, saved again for another principal: it may restore it too."""
        prompt = self.index.get(name)
        if prompt is not None:
            self._own(name, owner, prompt)

    def _pop(self, name: str, evicted: bool) -> Drop:
        self._disown(name)
        file = self.files.pop(name)
        return Drop(file=file, prompt=self.index.remove(name), evicted=evicted)


class Ghosts:
    """Prefixes a slot or a saved file held before they were evicted, newest kept."""

    def __init__(self, limit: int = GHOST_LIMIT) -> None:
        self.limit = limit
        self.index = PrefixIndex()

    def add(self, key: Any, prompt: Prompt) -> None:
        self.index.put(key, prompt)
        while len(self.index) > self.limit:
            self.index.remove(self.index.keys()[0])


@dataclass(frozen=True)
class Known:
    """The longest prefix of a prompt anything ever held: live, saved or evicted."""

    best: int = 0
    source: str = "none"
    held: int = 0  # how long that holder was, for "diverged at token N"


def known_best(prompt: Prompt, views: Iterable[SlotView], catalog: SavedCatalog,
               ghosts: Ghosts) -> Known:  # fmt: skip
    live = max(views, key=lambda v: v.cached, default=None)
    known = Known(live.cached, "live", live.held) if live is not None else Known()
    for source, index in (("saved", catalog.index), ("evicted", ghosts.index)):
        key, n = index.longest(prompt)
        if n > known.best and key is not None:
            entry = index.get(key)
            known = Known(n, source, len(entry) if entry is not None else n)
    return known
