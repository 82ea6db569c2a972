"""The security middleware's decisions (pure, on mocked requests): which host, key, origin
and path may pass, and the status that refuses the rest."""

from __future__ import annotations

import json

import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from proxy.config.exposure import Exposure
from proxy.web.security import host_allowed, presented_key, refusal


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1:11435", True),
        ("localhost:11435", True),
        ("[::1]:11435", True),
        ("10.0.0.5", True),
        ("evil.example:11435", False),
        ("attacker.rebind.network", False),
        ("kvproxy.lan:11435", True),  # allowed below
        ("KVPROXY.LAN.", True),
        (None, True),
    ],
)
def test_host_allowed(host: str | None, expected: bool) -> None:
    assert host_allowed(host, frozenset({"kvproxy.lan"})) is expected


@pytest.mark.parametrize(
    ("headers", "key"),
    [({"Authorization": "Bearer k1 "}, "k1"), ({"Authorization": "bearer k1"}, "k1"),
     ({"x-api-key": "k2"}, "k2"), ({"api-key": "k3"}, "k3"),
     ({"Authorization": "Basic xyz", "x-api-key": "k2"}, "k2"), ({}, "")],
)  # fmt: skip
def test_presented_key(headers: dict[str, str], key: str) -> None:
    assert presented_key(make_mocked_request("GET", "/", headers=headers)) == key


OPEN = Exposure()
KEYED = Exposure(api_keys=frozenset({"k"}))
CORS = Exposure(cors_origins=frozenset({"https://app"}))
ADMIN = Exposure(allow_admin=True, allow_slot_actions=True)
JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    ("exposure", "method", "path", "headers", "status"),
    [
        (OPEN, "GET", "/v1/models", {}, None),
        (OPEN, "GET", "/v1/models", {"Host": "evil.example"}, 421),
        (KEYED, "GET", "/v1/models", {}, 401),
        (KEYED, "GET", "/v1/models", {"Authorization": "Bearer k"}, None),
        (KEYED, "GET", "/v1/models", {"x-api-key": "wrong"}, 401),
        (KEYED, "GET", "/health", {}, None),  # open to probes
        (OPEN, "POST", "/v1/chat/completions", {"Origin": "https://evil", **JSON}, 403),
        (CORS, "POST", "/v1/chat/completions", {"Origin": "https://app", **JSON}, None),
        (CORS, "POST", "/v1/chat/completions", {"Origin": "https://app"}, 415),
        (CORS, "OPTIONS", "/v1/chat/completions", {"Origin": "https://app"}, None),
        (OPEN, "GET", "/slots", {}, None),
        (OPEN, "POST", "/slots/0", {}, 403),
        (ADMIN, "POST", "/slots/0", {}, None),
        (OPEN, "POST", "/models/load/", {}, 403),
        (OPEN, "DELETE", "/api/delete", {}, 403),
        (ADMIN, "POST", "/api/pull", {}, None),
        (OPEN, "GET", "/api/pull", {}, None),
    ],
)  # fmt: skip
def test_refusal(exposure: Exposure, method: str, path: str, headers: dict[str, str],
                 status: int | None) -> None:  # fmt: skip
    got = refusal(make_mocked_request(method, path, headers=headers), exposure)
    assert (None if got is None else got.status) == status
    if got is not None:
        assert json.loads(got.text)["error"]["code"] == status  # type: ignore[arg-type]


@pytest.mark.parametrize("header", ["Authorization", "x-api-key", "api-key", "Host"])
def test_a_header_sent_twice_is_refused(header: str) -> None:
    headers = CIMultiDict([(header, "localhost"), (header, "localhost")])
    got = refusal(make_mocked_request("GET", "/v1/models", headers=headers), OPEN)
    assert got is not None and got.status in (400, 421)


def test_an_absolute_form_target_is_refused() -> None:
    got = refusal(make_mocked_request("GET", "http://other/v1/models"), OPEN)
    assert got is not None and got.status == 400
