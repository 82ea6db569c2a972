"""Who sent a request and which session it names: the names real clients send."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.core.conversation import Conversation, Message
from proxy.rewrite.identity import digest, identify

UUID = "7f3c9a52-2d8e-4c1b-9a57-0c1e6f1d2b44"


def conv(**params: Any) -> Conversation:
    return Conversation(kind="chat", messages=(Message.make("user", "hi"),), params=params)


@pytest.mark.parametrize(
    ("headers", "params", "session"),
    [
        ({}, {}, None),
        ({"X-Session-Id": UUID}, {}, UUID),
        ({"X-Claude-Code-Session-Id": UUID}, {}, UUID),  # Claude Code
        ({"session-id": UUID}, {}, UUID),  # Codex
        ({}, {"prompt_cache_key": UUID}, UUID),  # Codex, OpenAI SDK
        ({}, {"metadata": {"session_id": UUID}}, UUID),
        ({}, {"metadata": {"user_id": f"user_abc_account_def_session_{UUID}"}}, UUID),
        ({}, {"metadata": {"user_id": f'{{"device_id":"d","session_id":"{UUID}"}}'}}, UUID),
        ({}, {"metadata": {"user_id": "user_abc"}}, None),
        ({}, {"metadata": "not an object", "prompt_cache_key": 7}, None),
    ],
)
def test_the_session_a_request_names(headers: dict[str, str], params: dict[str, Any],
                                      session: str | None) -> None:  # fmt: skip
    found = identify(headers, conv(**params)).session
    assert found == (digest(session) if session else None)


def test_a_session_name_does_not_change_the_principal() -> None:
    assert identify({}, conv(prompt_cache_key=UUID)).principal == identify({}, conv()).principal
