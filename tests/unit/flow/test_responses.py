"""Stored responses: private to their creator, bounded, mirrored to the persist sink."""

from __future__ import annotations

from proxy.flow.responses import ResponseStore, StoredResponse


def stored(rid: str, owner: str = "alice", text: str = "x") -> StoredResponse:
    return StoredResponse(owner, {"id": rid, "output": []}, [{"role": "user", "content": text}])


def test_only_the_creator_gets_or_deletes_a_response() -> None:
    store = ResponseStore()
    store.put(stored("r1"))
    assert store.get("r1", "mallory") is None and not store.delete("r1", "mallory")
    assert store.get("r1", "alice") is not None
    assert store.delete("r1", "alice") and store.get("r1", "alice") is None


def test_the_oldest_go_first_past_the_bounds() -> None:
    store = ResponseStore(max_responses=2)
    for rid in ("a", "b", "c"):
        store.put(stored(rid))
    assert [store.get(r, "alice") is not None for r in ("a", "b", "c")] == [False, True, True]
    small = ResponseStore(max_bytes=300)
    small.put(stored("big", text="y" * 400))  # larger than the whole store: not kept
    small.put(stored("s1"))
    small.put(stored("s2"))
    assert small.get("big", "alice") is None and len(small) == 2


def test_every_change_is_mirrored_and_restored() -> None:
    disk: dict[str, bytes] = {}

    def persist(rid: str, raw: bytes | None) -> None:
        if raw is None:
            disk.pop(rid, None)
        else:
            disk[rid] = raw

    store = ResponseStore(max_responses=2, persist=persist)
    for rid in ("a", "b", "c"):
        store.put(stored(rid))
    assert sorted(disk) == ["b", "c"]
    again = ResponseStore()
    again.restore([*disk.values(), b"not json"])
    assert again.get("c", "alice") is not None and again.get("a", "alice") is None
