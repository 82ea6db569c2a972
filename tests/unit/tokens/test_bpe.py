"""The tokenizer's piece cache is bounded by the tokens it holds, not by its entry count
(issue 10: five 4-8 MB prompts that the upstream rejected took RSS from 113 to 1311 MB)."""

from __future__ import annotations

from types import SimpleNamespace

from proxy.tokens.bpe import PIECE_CACHE_TOKENS, PieceTokenizer
from proxy.tokens.gguf import Vocab


class CharBPE:
    """One token per character: enough to see what the cache keeps."""

    def encode(self, text: str, add_special_tokens: bool = False) -> SimpleNamespace:
        return SimpleNamespace(ids=[ord(c) % 50_000 for c in text])


def test_the_piece_cache_holds_a_bounded_number_of_tokens() -> None:
    vocab = Vocab(tokens=["a"], token_types=[1], merges=[], pre="default", bos_id=None,
                  eos_id=None, add_bos=False, add_eos=False, chat_template=None)  # fmt: skip
    tok = PieceTokenizer(vocab, bpe=CharBPE())
    for i in range(12):
        tok.encode(f"{i}" + "x" * (PIECE_CACHE_TOKENS // 3))
    assert tok.cached_tokens <= PIECE_CACHE_TOKENS
    assert sum(map(len, tok._cache.values())) == tok.cached_tokens
    huge = "y" * (PIECE_CACHE_TOKENS + 10)
    assert len(tok.encode(huge)) == len(huge)  # tokenized, never cached
    assert tok.cached_tokens <= PIECE_CACHE_TOKENS
