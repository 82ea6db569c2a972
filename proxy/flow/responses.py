"""Stored OpenAI Responses: what ``previous_response_id`` and ``GET``/``DELETE
/v1/responses/{id}`` read, since neither llama-server nor ollama keeps responses.

Each stored response belongs to the principal that created it (a hash of its credential and
``user``): another principal gets a 404, exactly as for an id that never existed. The store is
bounded in number and bytes, least recently used first out; ``persist`` mirrors it to the
LMDB state database ``responses`` (``--keep-tapes lmdb``, the default) or nothing
(``memory``: nothing reaches the disk, and what an earlier run left is scrubbed).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

MAX_RESPONSES = 1024
MAX_BYTES = 64 << 20


@dataclass(frozen=True)
class StoredResponse:
    owner: str  # the principal that created it
    response: dict[str, Any]  # the Responses object the client got
    items: list[dict[str, Any]]  # the whole conversation as input items, output included

    @property
    def id(self) -> str:
        return str(self.response.get("id", ""))

    def dump(self) -> bytes:
        return json.dumps({"owner": self.owner, "response": self.response,
                           "items": self.items}, ensure_ascii=False).encode()  # fmt: skip

    @classmethod
    def load(cls, raw: bytes) -> StoredResponse:
        data = json.loads(raw)
        return cls(str(data["owner"]), dict(data["response"]), list(data["items"]))


class ResponseStore:
    def __init__(self, max_responses: int = MAX_RESPONSES, max_bytes: int = MAX_BYTES,
                 persist: Callable[[str, bytes | None], None] | None = None) -> None:  # fmt: skip
        self.max_responses, self.max_bytes, self.persist = max_responses, max_bytes, persist
        self._items: OrderedDict[str, tuple[StoredResponse, int]] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, stored: StoredResponse) -> None:
        raw = stored.dump()
        if len(raw) > self.max_bytes:
            return  # one conversation larger than the whole store is not kept
        self._drop(stored.id)
        self._items[stored.id] = (stored, len(raw))
        self._bytes += len(raw)
        if self.persist is not None:
            self.persist(stored.id, raw)
        while len(self._items) > self.max_responses or self._bytes > self.max_bytes:
            self._drop(next(iter(self._items)))

    def get(self, response_id: str, owner: str) -> StoredResponse | None:
        """The response, if ``owner`` created it; anyone else learns nothing (None)."""
        entry = self._items.get(response_id)
        if entry is None or entry[0].owner != owner:
            return None
        self._items.move_to_end(response_id)
        return entry[0]

    def delete(self, response_id: str, owner: str) -> bool:
        if self.get(response_id, owner) is None:
            return False
        self._drop(response_id)
        return True

    def restore(self, raws: Sequence[bytes]) -> None:
        for raw in raws:
            try:
                stored = StoredResponse.load(raw)
            except (ValueError, TypeError, KeyError):
                continue
            self._items[stored.id] = (stored, len(raw))
            self._bytes += len(raw)

    def _drop(self, response_id: str) -> None:
        entry = self._items.pop(response_id, None)
        if entry is not None:
            self._bytes -= entry[1]
            if self.persist is not None:
                self.persist(response_id, None)
