"""What clients may reach: the keys, and the one kvproxy uses for itself."""

from __future__ import annotations

import pytest

from proxy.config.exposure import Exposure


@pytest.mark.parametrize(
    ("keys", "key", "accepted"),
    [(frozenset({"a", "b"}), "a", True), (frozenset({"a", "b"}), "b", True),
     (frozenset({"a", "b"}), "c", False), (frozenset({"a"}), "", False),
     (frozenset({"abc"}), "ab", False), (frozenset(), "", False), (frozenset({"é"}), "é", True)],
)  # fmt: skip
def test_accepts(keys: frozenset[str], key: str, accepted: bool) -> None:
    assert Exposure(api_keys=keys).accepts(key) is accepted


def test_kvproxys_own_key_is_one_of_them_and_always_the_same() -> None:
    assert Exposure().api_key is None
    assert Exposure(api_keys=frozenset({"zz", "aa", "mm"})).api_key == "aa"


def test_the_default_exposes_nothing_beyond_the_api() -> None:
    default = Exposure()
    assert not (default.api_keys or default.cors_origins or default.allowed_hosts)
    assert not (default.allow_slot_actions or default.allow_admin)
