"""LocalTokenizer's decisions: the BOS/EOS strip, and which requests it renders itself."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.core.conversation import Conversation
from proxy.tokens import local, templates
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


async def test_an_appended_turn_is_tokenized_on_the_event_loop_unless_its_new_text_is_long(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A turn the resumed render extends is rendered and tokenized without the thread
    hand-off (it costs more than the work); one with a long new text still uses a thread.
    Either way the tokens are the whole render's."""
    threaded: list[str] = []

    async def to_thread(fn: Any, /, *args: Any) -> Any:
        threaded.append(fn.__name__)
        return fn(*args)

    monkeypatch.setattr(local.asyncio, "to_thread", to_thread)
    tok = LocalTokenizer(CharEncoder(add_bos=True), TEMPLATE, ServerTokenizer(None))
    tok.verified = Verified(features={PLAIN: frozenset([Normalization()])})
    messages = [{"role": ("user", "assistant")[i % 2], "content": f"turn {i}"} for i in range(15)]

    async def tokens(body: dict[str, Any]) -> list[int] | None:
        got = await tok.prompt_tokens(CHAT, body)
        whole = templates.render(TEMPLATE, body, tok.special, Normalization())
        assert got == [1, *map(ord, tok.drop_doubled_specials(whole))]
        return got

    await tokens({"messages": messages})
    assert threaded == ["tokens_of_chat"]  # the first turn: rendered whole, in a thread
    messages += [{"role": "assistant", "content": "ok"}, {"role": "user", "content": "more"}]
    await tokens({"messages": messages})  # resumed, once the shape is certified (a thread)
    assert threaded == ["tokens_of_chat"] * 2 and tok.resumed.resumed == 1
    messages += [{"role": "assistant", "content": "ok"}, {"role": "user", "content": "again"}]
    await tokens({"messages": messages})
    assert threaded == ["tokens_of_chat"] * 2 and tok.resumed.resumed == 2  # no thread
    messages += [{"role": "assistant", "content": "ok"},
                 {"role": "user", "content": "x" * (local.INLINE_CHARS + 1)}]  # fmt: skip
    await tokens({"messages": messages})
    assert threaded == ["tokens_of_chat"] * 2 + ["encode"] and tok.resumed.resumed == 3


async def test_a_bos_the_template_writes_is_dropped_once() -> None:
    """llama-server drops one BOS the template wrote where the tokenizer adds its own; a
    second one stays. The kept renders drop the template's BOS (``ResumedRender``'s
    ``drop``), so the text must not be stripped again."""
    odd = "{{ bos_token }}{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}"
    tok = LocalTokenizer(CharEncoder(add_bos=True), odd, ServerTokenizer(None))
    tok.verified = Verified(features={PLAIN: frozenset([Normalization()])})
    body = {"messages": [{"role": "user", "content": "hi"}]}
    assert await tok.prompt_tokens(CHAT, body) == [1, *map(ord, "<s>hi")]
