"""The GGUF's vocabulary and template here; the server only for what it renders itself."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from proxy.core.conversation import Conversation
from proxy.core.log import get_logger
from proxy.tokens.base import (
    Encoder,
    Partial,
    TokenizerUnavailable,
    completion_prompt,
    template_body,
)
from proxy.tokens.resume import ResumedRender
from proxy.tokens.server import ServerTokenizer
from proxy.tokens.templates import (
    NORMALIZATIONS,
    PLAIN,
    Normalization,
    Verified,
    features,
    user_start_marker,
    verify,
)

log = get_logger("kvproxy.tokens")

# An appended turn whose new text is at most this many characters (about two thousand tokens)
# is tokenized on the event loop: about a millisecond of work (``appended_tokens``).
INLINE_CHARS = 8_192


class LocalTokenizer:
    """GGUF vocabulary and template here; the server only for what it renders itself."""

    exact = True

    def __init__(self, pieces: Encoder, template: str, server: ServerTokenizer) -> None:
        self.pieces = pieces
        self.template = template
        self.server = server
        self.special = pieces.special_strings()  # bos/eos text: fixed for a vocabulary
        bos = self.special.get("bos_token") if pieces.add_bos else None
        # appended turns (resume.py), without the BOS the vocabulary adds itself
        self.resumed = ResumedRender(template, self.special, drop=bos)
        pieces.prepare(template)
        marker = user_start_marker(template, self.special)
        self.user_marker = tuple(pieces.encode(marker, add_special=False)) if marker else ()
        # Request features whose rendering here equals the server's (``verify``); until
        # verified, plain string conversations render here (round one's behaviour).
        self.verified = Verified(features={PLAIN: frozenset(NORMALIZATIONS[:1])})

    async def verify(self) -> Verified:
        """Compare this template's rendering with the server's on one probe per feature;
        only the features that match render here from now on (docs/tokens.md)."""

        async def server_render(body: dict[str, Any]) -> str:
            return await self.server.render(template_body(body))

        self.verified = await verify(self.template, self.special, server_render,
                                     self.drop_doubled_specials)  # fmt: skip
        return self.verified

    @classmethod
    def from_gguf(cls, path: Path, template: str | None, server: ServerTokenizer) -> LocalTokenizer:
        """llama.cpp's own tokenizer when libllama is installed (exact for every vocabulary
        type), else the rebuilt BPE for the pre-tokenizers it reproduces."""
        from proxy.tokens.bpe import PieceTokenizer
        from proxy.tokens.gguf import Vocab
        from proxy.tokens.llama import LlamaVocab, VocabUnavailable

        pieces: Encoder
        try:
            llama = LlamaVocab.load(path)
            pieces, own = llama, llama.chat_template
        except VocabUnavailable as exc:
            log.warning("tokenizer_libllama_unavailable", source=str(path), error=exc.message)
            vocab = Vocab.from_gguf(path)
            pieces, own = PieceTokenizer(vocab), vocab.chat_template
        chosen = template or own
        if not chosen:
            raise TokenizerUnavailable("no chat template in the GGUF or the server's /props")
        return cls(pieces, chosen, server)

    def render(self, body: dict[str, Any], norm: Normalization | None = None) -> str:
        """The prompt text, resumed from an earlier turn of the conversation where certified
        (``ResumedRender``): the same text as ``templates.render``."""
        return self.render_parts(body, norm)[0]

    def render_parts(self, body: dict[str, Any],
                     norm: Normalization | None = None) -> tuple[str, str | None]:  # fmt: skip
        """``render``'s text and, where ``ResumedRender`` keeps one, the text without the
        generation prompt that it starts with (``Encoder.encode``'s ``lead``)."""
        text, closed = self.resumed.render_parts(body, norm or Normalization())
        dropped = self.drop_eos(text)  # its BOS is gone already (``drop``)
        return dropped, closed if dropped is text else None

    def forget(self) -> None:
        """Drop every cached tokenization and kept render (``make bench-tokens``: cold)."""
        self.pieces.forget()
        self.resumed.forget()

    def drop_doubled_specials(self, text: str) -> str:
        """llama-server strips a BOS (EOS) the template wrote when the tokenizer adds one
        itself (common/chat.cpp), so that the prompt does not start with two."""
        bos = self.special.get("bos_token")
        if self.pieces.add_bos and bos and text.startswith(bos):
            text = text[len(bos) :]
        return self.drop_eos(text)

    def drop_eos(self, text: str) -> str:
        """The EOS half of ``drop_doubled_specials``."""
        eos = self.special.get("eos_token")
        if self.pieces.add_eos and eos and text.endswith(eos):
            text = text[: -len(eos)]
        return text

    async def appended_tokens(self, body: dict[str, Any], norm: Normalization) -> Sequence[int]:
        """An appended turn (``ResumedRender.resumes``): rendered on the event loop, and
        tokenized there too when its new text is short (``INLINE_CHARS``), since handing
        it to a thread and back costs more than the work, milliseconds on a busy machine
        (docs/tokens.md); a long new text is tokenized in a thread."""
        text, lead = self.render_parts(body, norm)
        if self.pieces.unknown_chars(text) <= INLINE_CHARS:
            return self.pieces.encode(text, lead=lead)
        return await asyncio.to_thread(self.pieces.encode, text, True, lead)

    async def appended_head(self, conv: Conversation, body: dict[str, Any]) -> Partial | None:
        """An appended turn as a prompt known in part (``Encoder.split_known``): the tokens
        of its leading chunks now, the rest for a worker thread, so that the request can
        be routed and sent while the new text is tokenized (docs/tokens.md). None where
        ``prompt_tokens`` decides: no chat, no resumed turn, no remembered chunks."""
        if conv.kind != "chat":
            return None
        norm = self.verified.normalization(features(body))
        if norm is None or not self.resumed.resumes(body, norm):
            return None
        return self.pieces.split_known(*self.render_parts(body, norm))

    def tokens_of_chat(self, body: dict[str, Any], norm: Normalization) -> Sequence[int]:
        text, lead = self.render_parts(body, norm)
        return self.pieces.encode(text, lead=lead)

    def text_tokens(self, text: str) -> list[int] | None:
        return list(self.pieces.encode(text, add_special=False))

    async def reply_tokens(self, text: str) -> list[int] | None:
        return self.text_tokens(text)

    async def prompt_tokens(self, conv: Conversation,
                            body: dict[str, Any]) -> Sequence[int] | None:  # fmt: skip
        if conv.kind == "chat":
            norm = self.verified.normalization(features(body))
            if norm is None:
                text = await self.server.render(template_body(body))
                return await asyncio.to_thread(self.pieces.encode, text)
            if self.resumed.resumes(body, norm):
                return await self.appended_tokens(body, norm)
            return await asyncio.to_thread(self.tokens_of_chat, body, norm)
        prompt = completion_prompt(body)
        if prompt is None or isinstance(prompt, list):
            return prompt
        return await asyncio.to_thread(self.pieces.encode, prompt)
