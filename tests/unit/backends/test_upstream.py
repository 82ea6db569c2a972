"""The servers behind kvproxy: specs, headers, /props believed only when sane, and
kvproxy's own credentials kept from the upstream (pure, or with a fake session)."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.backends.upstream import (
    MAX_CTX,
    MAX_SLOTS,
    Upstream,
    UpstreamSpec,
    describe,
    forwardable_headers,
    is_count,
    sane_props,
)


@pytest.mark.parametrize(
    ("text", "url", "kind"),
    [("http://h:8080/", "http://h:8080", None), ("llama:http://h", "http://h", "llama"),
     ("ollama:http://h:11434/", "http://h:11434", "ollama")],
)  # fmt: skip
def test_upstream_spec_parse(text: str, url: str, kind: str | None) -> None:
    assert UpstreamSpec.parse(text) == UpstreamSpec(url=url, kind=kind)  # type: ignore[arg-type]


def test_hop_by_hop_headers_are_not_forwarded() -> None:
    headers = {"Connection": "close", "Host": "x", "Content-Length": "3", "TE": "trailers",
               "Authorization": "Bearer k", "X-Session-Id": "s"}  # fmt: skip
    assert forwardable_headers(headers) == {"Authorization": "Bearer k", "X-Session-Id": "s"}


@pytest.mark.parametrize(
    ("value", "ok"),
    [(1, True), (MAX_SLOTS, True), (0, False), (MAX_SLOTS + 1, False), (True, False),
     (2.0, False), ("2", False), (None, False)],
)  # fmt: skip
def test_is_count(value: Any, ok: bool) -> None:
    assert is_count(value, 1, MAX_SLOTS) is ok


GOOD = {"total_slots": 2, "default_generation_settings": {"n_ctx": 4096},
        "model_path": "/m.gguf", "endpoint_slots": True, "build_info": "b1"}  # fmt: skip


@pytest.mark.parametrize(
    ("props", "changed", "note"),
    [
        (GOOD, {}, None),
        ({**GOOD, "total_slots": 50_000_000}, {"total_slots": 1}, "total_slots"),
        ({**GOOD, "total_slots": True}, {"total_slots": 1}, "total_slots"),
        ({**GOOD, "default_generation_settings": {"n_ctx": MAX_CTX + 1, "temp": 1}},
         {"default_generation_settings": {"temp": 1}}, "n_ctx"),
        ({**GOOD, "default_generation_settings": [1]},
         {"default_generation_settings": {}}, "default_generation_settings"),
        ({**GOOD, "model_path": 3}, {"model_path": None}, "model_path"),
        ({**GOOD, "endpoint_slots": "yes"}, {"endpoint_slots": None}, "endpoint_slots"),
    ],
)  # fmt: skip
def test_sane_props(props: dict[str, Any], changed: dict[str, Any], note: str | None) -> None:
    out, notes = sane_props(props)
    expected = {**props, **changed}
    assert out == {k: v for k, v in expected.items() if v is not None}
    assert (notes == []) if note is None else (len(notes) == 1 and note in notes[0])


@pytest.mark.parametrize("props", [[], "x", None, 3])
def test_props_that_are_no_object_are_ignored(props: Any) -> None:
    out, notes = sane_props(props)
    assert out == {} and "not a JSON object" in notes[0]


def test_describe_is_one_short_line() -> None:
    assert describe(OSError("first\nsecond")) == "first"
    assert describe(TimeoutError()) == "TimeoutError"
    assert len(describe(ValueError("x" * 500))) == 200


class FakeResponse:
    def close(self) -> None: ...

    def release(self) -> None: ...


class FakeSession:
    """Records the headers each request would send."""

    def __init__(self) -> None:
        self.sent: list[dict[str, str] | None] = []

    async def request(self, method: str, url: Any, **kw: Any) -> FakeResponse:
        self.sent.append(kw["headers"])
        return FakeResponse()


@pytest.mark.parametrize(
    ("drop", "forwarded"),
    [(True, {"X-Session-Id": "s"}),
     (False, {"Authorization": "Bearer k", "x-api-key": "k", "Api-Key": "k",
              "X-Session-Id": "s"})],
)  # fmt: skip
async def test_kvproxys_own_credentials_are_dropped_when_it_has_keys(
    drop: bool, forwarded: dict[str, str]
) -> None:
    session = FakeSession()
    up = Upstream(url="http://u", kind="llama", session=session,  # type: ignore[arg-type]
                  drop_credentials=drop)  # fmt: skip
    headers = {"Authorization": "Bearer k", "x-api-key": "k", "Api-Key": "k", "X-Session-Id": "s"}
    async with up.request("POST", "/completion", headers=headers):
        pass
    assert session.sent == [forwarded]
