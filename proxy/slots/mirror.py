"""The slot state's durable copy (LMDB): what every slot holds and which saved files exist,
so that a restarted kvproxy starts warm.

Keys: ``live|<upstream url>|<slot>`` for a slot's content, ``file|<name>`` for a saved
file, ``rate|<upstream url>`` for the server's learned restore cost (``ReadBack``). The
writes go through ``persist(key, value or None to delete)``, where the value is a function
serializing the state, called on the store's writer thread.
"""

from __future__ import annotations

import base64
import json
from array import array
from collections.abc import Callable
from typing import Any

from proxy.core.prefix_index import Prompt
from proxy.slots.catalog import SavedCatalog, SavedFile
from proxy.slots.servers import ServerSlots

Persist = Callable[[str, Callable[[], bytes] | None], None]


def encode_state(prompt: Prompt, **meta: Any) -> bytes:
    """A prompt's tokens and a little metadata, for LMDB."""
    tokens = base64.b64encode(prompt.tokens.tobytes()).decode()
    return json.dumps({"tokens": tokens, **meta}, separators=(",", ":")).encode()


def decode_state(raw: bytes) -> tuple[Prompt, dict[str, Any]]:
    data = json.loads(raw)
    tokens = array("i")
    tokens.frombytes(base64.b64decode(data.pop("tokens")))
    return Prompt.of(tokens), data


class Mirror:
    """Writes slot contents and saved files through ``persist`` (None: nothing is kept)
    and reads them back at start."""

    def __init__(self, servers: list[ServerSlots], catalog: SavedCatalog,
                 persist: Persist | None = None) -> None:  # fmt: skip
        self.servers = servers
        self.catalog = catalog
        self.persist = persist

    def slot(self, server: ServerSlots, slot: int) -> None:
        if self.persist is None:
            return
        held = server.table.held.get(slot)
        key = f"live|{server.upstream.url}|{slot}"
        if held is None:
            self.persist(key, None)
            return
        saved_len, owner = server.table.states[slot].saved_len, server.table.states[slot].owner
        self.persist(key, lambda: encode_state(held, saved_len=saved_len, owner=owner))

    def rates(self, server: ServerSlots) -> None:
        if self.persist is not None:
            data = server.read_back.dump()
            self.persist(f"rate|{server.upstream.url}", lambda: data)

    def file(self, name: str) -> None:
        if self.persist is None:
            return
        info, prompt = self.catalog.files.get(name), self.catalog.get(name)
        if info is None or prompt is None:
            self.persist(f"file|{name}", None)
            return
        url, size = self.servers[info.server].upstream.url, info.size
        owners = sorted(self.catalog.owners_of(name))
        self.persist(f"file|{name}", lambda: encode_state(prompt, upstream=url, size=size,
                                                          owners=owners))  # fmt: skip

    def load(self, items: list[tuple[str, bytes]]) -> int:
        """Slot contents and saved files from a previous run, for the upstreams that are
        still configured (files only if still on disk, where kvproxy knows the directory).
        The next request's /slots check cuts back whatever the servers no longer hold."""
        by_url = {server.upstream.url: server for server in self.servers}
        loaded = 0
        for key, raw in items:
            kind, _, rest = key.partition("|")
            if kind == "rate":
                if rest in by_url:
                    by_url[rest].read_back.load(raw)
                continue
            try:
                prompt, meta = decode_state(raw)
            except (ValueError, KeyError, TypeError):
                continue
            if kind == "live":
                loaded += self._load_live(by_url, rest, prompt, meta)
            elif kind == "file":
                loaded += self._load_file(by_url, rest, prompt, meta)
            else:
                loaded += 1
        return loaded

    @staticmethod
    def _load_live(by_url: dict[str, ServerSlots], rest: str, prompt: Prompt,
                   meta: dict[str, Any]) -> int:  # fmt: skip
        url, _, slot_text = rest.rpartition("|")
        server = by_url.get(url)
        if server is None or not slot_text.isdigit() or int(slot_text) >= server.n_slots:
            return 0
        slot = int(slot_text)
        server.table.held.put(slot, prompt)
        server.table.states[slot].saved_len = int(meta.get("saved_len", 0))
        owner = meta.get("owner")
        server.table.states[slot].owner = owner if isinstance(owner, str) else None
        return 1

    def _load_file(self, by_url: dict[str, ServerSlots], name: str, prompt: Prompt,
                   meta: dict[str, Any]) -> int:  # fmt: skip
        server = by_url.get(meta.get("upstream", ""))
        if server is None:
            return 0
        if server.slot_dir is not None and not (server.slot_dir / name).exists():
            return 0
        size = int(meta.get("size", 0))
        owners = [o for o in meta.get("owners") or () if isinstance(o, str)]
        self.catalog.load(SavedFile(name, server.index, size, server.slot_dir is not None),
                          prompt, owners)  # fmt: skip
        return 1
