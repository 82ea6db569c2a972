"""The handlers' pure decisions: which forwarded POSTs never take a slot, which count
tokens, when an error is the client's own disconnect, and the warm header kept home."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from aiohttp.test_utils import make_mocked_request

from proxy.core.errors import BadRequest, UpstreamError
from proxy.dialects.anthropic_messages import DIALECT as ANTHROPIC
from proxy.dialects.openai_responses import DIALECT as RESPONSES
from proxy.web.handlers import COUNTERS, SLOT_FREE, client_gone, without_warm_header
from proxy.web.warm import WARM_HEADER


@pytest.mark.parametrize(
    ("path", "free"),
    [("/tokenize", True), ("/detokenize", True), ("/apply-template", True),
     ("/v1/messages/count_tokens", True), ("/v1/responses/input_tokens", True),
     ("/api/show", True), ("/completion", False), ("/infill", False), ("/embeddings", False),
     ("/slots/0", False), ("/api/embed", False)],
)  # fmt: skip
def test_slot_free(path: str, free: bool) -> None:
    assert (path in SLOT_FREE) is free


def test_every_counter_is_slot_free_and_speaks_its_dialect() -> None:
    assert set(COUNTERS) <= SLOT_FREE
    assert COUNTERS == {"/v1/messages/count_tokens": ANTHROPIC,
                        "/v1/responses/input_tokens": RESPONSES}  # fmt: skip


def error_from(cause: BaseException | None) -> UpstreamError:
    err = UpstreamError("write failed")
    err.__cause__ = cause
    return err


@pytest.mark.parametrize(
    ("closing", "err", "gone"),
    [(True, error_from(ConnectionResetError()), True),
     (None, error_from(ConnectionResetError()), True),  # no transport left
     (False, error_from(ConnectionResetError()), False),  # still connected: the upstream's
     (True, error_from(TimeoutError()), False),
     (True, error_from(None), False),
     (True, BadRequest("x"), False)],
)  # fmt: skip
def test_client_gone(closing: bool | None, err: Exception, gone: bool) -> None:
    """Only the transport is read: a stand-in request holds just that."""
    transport = None if closing is None else SimpleNamespace(is_closing=lambda: closing)
    request = SimpleNamespace(transport=transport)
    assert client_gone(request, err) is gone  # type: ignore[arg-type]


def test_the_warm_header_never_goes_upstream() -> None:
    request = make_mocked_request("POST", "/completion", headers={
        WARM_HEADER: "token", "X-Kvproxy-Warm": "token", "X-Session-Id": "s"})  # fmt: skip
    clean = without_warm_header(request)
    assert dict(clean.headers) == {"X-Session-Id": "s"}
    assert clean.path == request.path
