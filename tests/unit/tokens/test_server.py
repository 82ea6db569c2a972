"""The server path: what it sends to llama-server and how it reads the answers."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.core.conversation import Conversation
from proxy.tokens.base import TokenizerUnavailable
from proxy.tokens.server import ServerTokenizer
from tests.unit.tokens.stubs import CannedUpstream

CHAT = Conversation(kind="chat")


@pytest.mark.parametrize(
    ("tokens", "expect"),
    [
        ([1, 2, 3], [1, 2, 3]),
        ([{"id": 5, "piece": "a"}, {"id": 6, "piece": "b"}], [5, 6]),  # with_pieces form
        ([], []),
    ],
)
async def test_tokenize_reads_both_answer_forms(tokens: list[Any], expect: list[int]) -> None:
    up = CannedUpstream({"/tokenize": (200, {"tokens": tokens})})
    assert await ServerTokenizer(up).tokenize("x") == expect


@pytest.mark.parametrize(
    "answer",
    [(500, {"error": "x"}), (200, ValueError("bad json")), (200, [1, 2]), (200, {"nope": 1})],
)
async def test_a_bad_answer_is_tokenizer_unavailable(answer: tuple[int, Any]) -> None:
    up = CannedUpstream({"/tokenize": answer})
    with pytest.raises(TokenizerUnavailable):
        await ServerTokenizer(up).tokenize("x")


async def test_a_chat_prompt_is_rendered_then_tokenized_with_specials() -> None:
    up = CannedUpstream({"/apply-template": (200, {"prompt": "<|user|>hi"}),
                         "/tokenize": (200, {"tokens": [9, 8]})})  # fmt: skip
    body = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0.5, "tools": []}
    assert await ServerTokenizer(up).prompt_tokens(CHAT, body) == [9, 8]
    (_, rendered), (_, tokenized) = up.sent
    assert rendered == {"messages": body["messages"], "tools": []}  # only what shapes it
    assert tokenized == {"content": "<|user|>hi", "add_special": True, "parse_special": True}


async def test_a_reply_is_tokenized_without_bos_off_the_response_path() -> None:
    up = CannedUpstream({"/tokenize": (200, {"tokens": [4, 5]})})
    tok = ServerTokenizer(up)
    assert tok.text_tokens("a reply") is None  # needs I/O: not on the response path
    assert tok.text_tokens("") == []
    assert await tok.reply_tokens("a reply") == [4, 5]
    assert up.sent[0][1]["add_special"] is False


@pytest.mark.parametrize(
    ("body", "expect", "calls"),
    [
        ({"prompt": [1, 2, 3]}, [1, 2, 3], 0),  # token prompts need no round trip
        ({"prompt": [[1, 2]]}, [1, 2], 0),
        ({"prompt": ["a", "b"]}, None, 0),  # several prompts: unknown
        ({"prompt": "text"}, [7], 1),
    ],
)
async def test_completion_prompts(body: dict[str, Any], expect: Any, calls: int) -> None:
    up = CannedUpstream({"/tokenize": (200, {"tokens": [7]})})
    conv = Conversation(kind="completion")
    assert await ServerTokenizer(up).prompt_tokens(conv, body) == expect
    assert len(up.sent) == calls
