"""llama.cpp's byte-level BPE rebuilt with `tokenizers` from GGUF metadata: the fallback
when libllama (``proxy.tokens.llama``) is not installed, exact for the pre-tokenizers listed
in ``PRE_TOKENIZER_REGEXES`` only. Also loads a Hugging Face tokenizer directory."""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import xxhash

from proxy.tokens.base import TokenizerUnavailable
from proxy.tokens.gguf import Vocab

# llama.cpp's pre-tokenizer regexes by `tokenizer.ggml.pre` (src/llama-vocab.cpp); applied
# in order, each splitting the pieces of the previous one, before byte-level BPE.
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
PRE_TOKENIZER_REGEXES: dict[str, tuple[str, ...]] = {
    "gpt2": (GPT2_REGEX,),
    "mpt": (GPT2_REGEX,),
    "olmo": (GPT2_REGEX,),
    "smollm": (r"\p{N}", GPT2_REGEX),
    "codeshell": (r"\p{N}", GPT2_REGEX),
    "exaone": (r"\p{N}", GPT2_REGEX),
    "minerva": (r"\p{N}", GPT2_REGEX),
}
CONTROL, USER_DEFINED = 3, 4
PIECE_CACHE_SIZE = 16384
# The piece cache holds at most this many tokens in all (tens of MB): a bound by size, so a
# few huge prompts cannot grow the process; a piece larger than a quarter of it is not kept.
PIECE_CACHE_TOKENS = 2_000_000


def build_bpe(vocab: Vocab) -> Any:
    """A `tokenizers` BPE equivalent to llama.cpp's for this vocabulary (no special tokens:
    those are split off before, as llama.cpp does)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    regexes = PRE_TOKENIZER_REGEXES.get(vocab.pre)
    if regexes is None:
        raise TokenizerUnavailable(f"pre-tokenizer {vocab.pre!r} is not rebuilt locally")
    merges = [tuple(m.split(" ", 1)) for m in vocab.merges]
    bpe = models.BPE(
        vocab={t: i for i, t in enumerate(vocab.tokens)},
        merges=merges,
        ignore_merges=False,
    )
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in regexes]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tok.decoder = decoders.ByteLevel()
    return tok


class PieceTokenizer:
    """Splits text at special tokens and tokenizes each piece once (cached by content hash)."""

    def __init__(self, vocab: Vocab, bpe: Any = None) -> None:
        self.vocab = vocab
        self.bpe = bpe if bpe is not None else build_bpe(vocab)
        self.special = {
            text: i
            for i, (text, kind) in enumerate(zip(vocab.tokens, vocab.token_types, strict=False))
            if kind in (CONTROL, USER_DEFINED) and text
        }
        ordered = sorted(self.special, key=len, reverse=True)
        self._split = re.compile("(" + "|".join(map(re.escape, ordered)) + ")") if ordered else None
        self._cache: OrderedDict[int, tuple[int, ...]] = OrderedDict()
        self.cached_tokens = 0
        self.pieces_tokenized = 0

    def forget(self) -> None:
        self._cache.clear()
        self.cached_tokens = 0

    def _piece(self, text: str) -> tuple[int, ...]:
        key = xxhash.xxh3_64_intdigest(text.encode("utf-8", "surrogatepass"))
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        ids = tuple(self.bpe.encode(text, add_special_tokens=False).ids)
        self.pieces_tokenized += 1
        if len(ids) > PIECE_CACHE_TOKENS // 4:
            return ids
        self._cache[key] = ids
        self.cached_tokens += len(ids)
        while len(self._cache) > PIECE_CACHE_SIZE or self.cached_tokens > PIECE_CACHE_TOKENS:
            _, old = self._cache.popitem(last=False)
            self.cached_tokens -= len(old)
        return ids

    def encode(self, text: str, add_special: bool = True, lead: str | None = None) -> list[int]:
        out: list[int] = []
        if add_special and self.vocab.add_bos and self.vocab.bos_id is not None:
            out.append(self.vocab.bos_id)
        parts = self._split.split(text) if self._split else [text]
        for i, part in enumerate(parts):
            if i % 2 == 1:
                out.append(self.special[part])
            elif part:
                out.extend(self._piece(part))
        if add_special and self.vocab.add_eos and self.vocab.eos_id is not None:
            out.append(self.vocab.eos_id)
        return out

    def unknown_chars(self, text: str, add_special: bool = True) -> int:
        """All of it: the whole text is split at special tokens each time."""
        return len(text)

    def split_known(self, text: str, lead: str | None = None) -> None:
        """Never: no prompt's leading chunks are remembered."""
        return None

    @property
    def add_bos(self) -> bool:
        return self.vocab.add_bos

    @property
    def add_eos(self) -> bool:
        return self.vocab.add_eos

    def prepare(self, template: str) -> None:
        """Nothing to do: the text is split at every special token already."""

    def special_strings(self) -> dict[str, str]:
        names = {}
        for name, tid in (("bos_token", self.vocab.bos_id), ("eos_token", self.vocab.eos_id)):
            if tid is not None and 0 <= tid < len(self.vocab.tokens):
                names[name] = self.vocab.tokens[tid]
        return names


def load_tokenizer_dir(path: Path) -> tuple[PieceTokenizer, str | None]:
    """A Hugging Face tokenizer directory (tokenizer.json + tokenizer_config.json)."""
    import json

    from tokenizers import Tokenizer as HFTokenizer

    bpe = HFTokenizer.from_file(str(path / "tokenizer.json"))
    config_path = path / "tokenizer_config.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    template = config.get("chat_template")
    jinja = path / "chat_template.jinja"
    if template is None and jinja.exists():
        template = jinja.read_text()
    size = bpe.get_vocab_size(with_added_tokens=True)
    tokens = [bpe.id_to_token(i) or "" for i in range(size)]
    special = {t.content for t in bpe.get_added_tokens_decoder().values() if t.special}
    types = [CONTROL if t in special else 1 for t in tokens]

    def token_id(name: str) -> int | None:
        value = config.get(name)
        text = value.get("content") if isinstance(value, dict) else value
        return bpe.token_to_id(text) if isinstance(text, str) else None

    vocab = Vocab(
        tokens=tokens,
        token_types=types,
        merges=[],
        pre="",
        bos_id=token_id("bos_token"),
        eos_id=token_id("eos_token"),
        add_bos=bool(config.get("add_bos_token", False)),
        add_eos=bool(config.get("add_eos_token", False)),
        chat_template=template if isinstance(template, str) else None,
    )
    return PieceTokenizer(vocab, bpe=bpe), vocab.chat_template
