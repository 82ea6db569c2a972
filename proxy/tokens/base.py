"""What every tokenizer offers, and the request parts that shape a prompt."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from proxy.core.conversation import Conversation
from proxy.core.errors import ProxyError


class TokenizerUnavailable(ProxyError):
    status = 503


class Tokenizer(Protocol):
    exact: bool
    # The template's user-message start as tokens, where llama-server takes context
    # checkpoints (slot_table.checkpoints_after); empty when unknown.
    user_marker: tuple[int, ...]

    async def prompt_tokens(self, conv: Conversation,
                            body: dict[str, Any]) -> Sequence[int] | None:  # fmt: skip
        """The tokens the upstream will see for this request, or None if unknowable."""
        ...

    def text_tokens(self, text: str) -> list[int] | None:
        """Tokens of generated text, as the prompt of the next turn holds them; None when
        that needs I/O. Synchronous: it runs as the response ends, where a client that
        hangs up would cancel an await and lose what the slot now holds."""
        ...

    async def reply_tokens(self, text: str) -> list[int] | None:
        """The same tokens where ``text_tokens`` needs I/O (the server's ``/tokenize``),
        asked after the response ended."""
        ...


@dataclass(frozen=True)
class Partial:
    """An appended turn's prompt known in part: the tokens of its leading chunks, which a
    recent prompt had (``head``, a prefix of the whole prompt's tokens), and what tokenizes
    the rest (``rest``: blocking, for a worker thread; it returns the whole prompt's
    tokens). ``tail_bytes`` is the UTF-8 size of the text after the head: no more tokens
    than that follow it."""

    head: Sequence[int]
    rest: Callable[[], Sequence[int]]
    tail_bytes: int


class Encoder(Protocol):
    """What LocalTokenizer needs of a tokenizer: ``LlamaVocab`` (llama.cpp's own) or the
    rebuilt ``PieceTokenizer``."""

    add_bos: bool
    add_eos: bool

    def encode(self, text: str, add_special: bool = True, lead: str | None = None
               ) -> Sequence[int]:  # fmt: skip
        """``text``'s tokens; ``lead``: a text it starts with that the caller holds (a
        hint for remembering it, ``LlamaVocab.encode``)."""
        ...

    def unknown_chars(self, text: str, add_special: bool = True) -> int:
        """How many characters of ``text`` ``encode`` would look at: past the leading
        chunks it remembers from a recent prompt (all of them when it keeps none)."""
        ...

    def split_known(self, text: str, lead: str | None = None) -> Partial | None:
        """``text`` as a prompt known in part (``Partial``), where its leading chunks are
        a recent prompt's; None where they are not (``encode`` then tokenizes it)."""
        ...

    def special_strings(self) -> dict[str, str]: ...

    def prepare(self, template: str) -> None:
        """Get ready for prompts of this chat template (``LlamaVocab``: chunk boundaries)."""
        ...

    def forget(self) -> None:
        """Drop every cached tokenization (``make bench-tokens``: cold figures)."""
        ...


def completion_prompt(body: dict[str, Any]) -> str | list[int] | None:
    """The single prompt of a completion body, as text or tokens; None when it is several."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return list(prompt)
    return None


def template_body(body: dict[str, Any]) -> dict[str, Any]:
    """The parts of a chat body that shape the prompt (what /apply-template takes)."""
    keys = ("messages", "tools", "tool_choice", "chat_template_kwargs", "parallel_tool_calls")
    return {k: body[k] for k in keys if k in body}
