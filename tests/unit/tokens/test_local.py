"""LocalTokenizer's decisions: the BOS/EOS strip, and which requests it renders itself."""

from __future__ import annotations

import pytest

from proxy.core.conversation import Conversation
from proxy.tokens.local import LocalTokenizer
from proxy.tokens.server import ServerTokenizer
from proxy.tokens.templates import PLAIN, TOOLS, Normalization, Verified
from tests.unit.tokens.stubs import CannedUpstream, CharEncoder

TEMPLATE = "{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}"
CHAT = Conversation(kind="chat")
TOOL = {"type": "function", "function": {"name": "f", "parameters": {}}}


@pytest.mark.parametrize(
    ("add_bos", "add_eos", "text", "expect"),
    [
        (True, False, "<s>[user]hi", "[user]hi"),  # the tokenizer adds it: no double BOS
        (False, False, "<s>[user]hi", "<s>[user]hi"),
        (True, False, "[user]hi", "[user]hi"),
        (False, True, "[user]hi</s>", "[user]hi"),
        (True, True, "<s>x</s>", "x"),
    ],
)
def test_finish_strips_what_the_tokenizer_adds(add_bos: bool, add_eos: bool, text: str,
                                               expect: str) -> None:  # fmt: skip
    tok = LocalTokenizer(CharEncoder(add_bos, add_eos), TEMPLATE, ServerTokenizer(None))
    assert tok.drop_doubled_specials(text) == expect


async def test_verified_features_render_here_and_others_on_the_server() -> None:
    up = CannedUpstream({"/apply-template": (200, {"prompt": "[server]"})})
    tok = LocalTokenizer(CharEncoder(add_bos=True), TEMPLATE, ServerTokenizer(up))
    tok.verified = Verified(features={PLAIN: frozenset([Normalization()])})
    plain = {"messages": [{"role": "user", "content": "hi"}]}
    assert await tok.prompt_tokens(CHAT, plain) == [1, *map(ord, "[user]hi")]
    assert up.sent == []  # rendered here
    with_tools = {**plain, "tools": [TOOL]}
    assert await tok.prompt_tokens(CHAT, with_tools) == [1, *map(ord, "[server]")]
    assert [path for path, _ in up.sent] == ["/apply-template"]
    tok.verified.features[TOOLS] = frozenset([Normalization()])
    assert await tok.prompt_tokens(CHAT, with_tools) == [1, *map(ord, "[user]hi")]
    assert len(up.sent) == 1


async def test_replies_are_tokenized_here_without_specials() -> None:
    tok = LocalTokenizer(CharEncoder(add_bos=True), TEMPLATE, ServerTokenizer(None))
    assert tok.text_tokens("ok") == [111, 107]
    assert await tok.reply_tokens("ok") == [111, 107]
