"""The compaction shapes, recognised on what the real clients send (tests/data/clients:
captured from Claude Code 2.1.328 and Codex 0.169.0), parsed by their own dialects."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from proxy.core.conversation import Message
from proxy.dialects.anthropic_messages import DIALECT as MESSAGES
from proxy.dialects.openai_responses import DIALECT as RESPONSES
from proxy.rewrite.compaction import shape_of

CLIENTS = Path(__file__).parents[2] / "data" / "clients"


def last_body(path: Path) -> dict:
    return json.loads(path.read_text())["requests"][-1]["body"]


def shapes(messages: tuple[Message, ...]) -> list[str]:
    return [s for s in map(shape_of, messages) if s is not None]


@pytest.mark.parametrize(("fixture", "dialect", "found"), [
    ("claude_code/7_after_compact.json", MESSAGES, ["claude-code"]),
    ("claude_code/2_second_turn.json", MESSAGES, []),
    ("codex/5_compact.json", RESPONSES, ["codex"]),
    ("codex/2_second_turn.json", RESPONSES, []),
])  # fmt: skip
def test_the_compacted_request_of_each_real_client_is_recognised(
    fixture: str, dialect: object, found: list[str]
) -> None:
    conv = dialect.parse(last_body(CLIENTS / fixture))  # type: ignore[attr-defined]
    assert shapes(conv.messages) == found


@pytest.mark.parametrize(("message", "shape"), [
    (Message("user", "The conversation history before this point was compacted into the "
                     "following summary:\n\nx"), "openclaw"),
    (Message("assistant", "[CONTEXT COMPACTION — REFERENCE ONLY] x"), "hermes"),
    (Message("user", [{"type": "text", "text": "<system-reminder>x</system-reminder>"},
                      {"type": "text", "text": "This session is being continued from a "
                                               "previous conversation that ran out"}]),
     "claude-code"),
    (Message("system", "This session is being continued from a previous conversation"), None),
    (Message("user", "Tell me about another language model"), None),
])  # fmt: skip
def test_shapes(message: Message, shape: str | None) -> None:
    assert shape_of(message) == shape
