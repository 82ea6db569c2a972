"""The upstream's own tokens for a request: chat template rendered and tokenized as the server does.

Three ways, best first:
- ``LocalTokenizer``: the model's BPE vocabulary, merges and pre-tokenizer rebuilt with
  `tokenizers` from the GGUF metadata (no torch), the chat template rendered by
  transformers' Jinja renderer. Text is split at special tokens first, exactly as
  llama.cpp does, and each piece's tokens are cached by its xxhash: appending one message
  to a long conversation tokenizes only the new piece.
- ``ServerTokenizer``: llama-server's ``/apply-template`` and ``/tokenize`` (exact, one
  round trip each), used when the GGUF is not readable here, and for requests whose
  rendering the server does itself (tools the template does not know, typed content parts).
- ``EstimatedTokens``: for ollama (Go templates), per-message pseudo-tokens (about four
  characters each) whose prefix structure follows the messages; records say ``estimated``.
"""

from __future__ import annotations

import asyncio
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import xxhash

from proxy.conversation import Conversation, thaw
from proxy.errors import ProxyError
from proxy.log import get_logger
from proxy.templates import NORMALIZATIONS, PLAIN, Normalization, Verified, features, render, verify

log = get_logger("kvproxy.tokens")

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


class TokenizerUnavailable(ProxyError):
    status = 503


class Tokenizer(Protocol):
    exact: bool

    async def prompt_tokens(self, conv: Conversation, body: dict[str, Any]) -> list[int] | None:
        """The tokens the upstream will see for this request, or None if unknowable."""
        ...

    def text_tokens(self, text: str) -> list[int] | None:
        """Tokens of generated text, as the prompt of the next turn holds them; None when
        that needs I/O. Synchronous: it runs as the response ends, where a client that
        hangs up would cancel an await and lose what the slot now holds."""
        ...


@dataclass(frozen=True)
class Vocab:
    """The tokenizer-relevant GGUF metadata."""

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    pre: str
    bos_id: int | None
    eos_id: int | None
    add_bos: bool
    add_eos: bool
    chat_template: str | None

    @classmethod
    def from_gguf(cls, path: Path) -> Vocab:
        import gguf

        reader = gguf.GGUFReader(str(path))
        fields = reader.fields

        def get(key: str, default: Any = None) -> Any:
            field = fields.get(key)
            return default if field is None else field.contents()

        model = get("tokenizer.ggml.model")
        if model != "gpt2":
            raise TokenizerUnavailable(f"GGUF tokenizer model {model!r} is not rebuilt locally")
        return cls(
            tokens=get("tokenizer.ggml.tokens"),
            token_types=get("tokenizer.ggml.token_type", []),
            merges=get("tokenizer.ggml.merges", []),
            pre=get("tokenizer.ggml.pre", "default"),
            bos_id=get("tokenizer.ggml.bos_token_id"),
            eos_id=get("tokenizer.ggml.eos_token_id"),
            add_bos=bool(get("tokenizer.ggml.add_bos_token", False)),
            add_eos=bool(get("tokenizer.ggml.add_eos_token", False)),
            chat_template=get("tokenizer.chat_template"),
        )


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

    def encode(self, text: str, add_special: bool = True) -> list[int]:
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

    @property
    def add_bos(self) -> bool:
        return self.vocab.add_bos

    @property
    def add_eos(self) -> bool:
        return self.vocab.add_eos

    def special_strings(self) -> dict[str, str]:
        names = {}
        for name, tid in (("bos_token", self.vocab.bos_id), ("eos_token", self.vocab.eos_id)):
            if tid is not None and 0 <= tid < len(self.vocab.tokens):
                names[name] = self.vocab.tokens[tid]
        return names


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


class ServerTokenizer:
    """llama-server renders and tokenizes: exact, at the cost of loopback round trips."""

    exact = True

    def __init__(self, upstream: Any) -> None:
        self.upstream = upstream

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with self.upstream.request("POST", path, json_body=body) as resp:
            if resp.status != 200:
                raise TokenizerUnavailable(f"{path} answered {resp.status}")
            try:
                data = await resp.json(content_type=None)
            except ValueError as exc:
                raise TokenizerUnavailable(f"{path} sent invalid JSON") from exc
            if not isinstance(data, dict):
                raise TokenizerUnavailable(f"{path} sent no object")
            return data

    async def tokenize(self, text: str) -> list[int]:
        data = await self._post(
            "/tokenize", {"content": text, "add_special": True, "parse_special": True}
        )
        return [t if isinstance(t, int) else t["id"] for t in data.get("tokens", [])]

    async def render(self, body: dict[str, Any]) -> str:
        return (await self._post("/apply-template", body))["prompt"]

    def text_tokens(self, text: str) -> list[int] | None:
        return [] if not text else None

    async def prompt_tokens(self, conv: Conversation, body: dict[str, Any]) -> list[int] | None:
        if conv.kind == "chat":
            return await self.tokenize(await self.render(template_body(body)))
        prompt = completion_prompt(body)
        if prompt is None or isinstance(prompt, list):
            return prompt
        return await self.tokenize(prompt)


def template_body(body: dict[str, Any]) -> dict[str, Any]:
    """The parts of a chat body that shape the prompt (what /apply-template takes)."""
    keys = ("messages", "tools", "tool_choice", "chat_template_kwargs", "parallel_tool_calls")
    return {k: body[k] for k in keys if k in body}


class Encoder(Protocol):
    """What LocalTokenizer needs of a tokenizer: ``LlamaVocab`` (llama.cpp's own) or the
    rebuilt ``PieceTokenizer``."""

    add_bos: bool
    add_eos: bool

    def encode(self, text: str, add_special: bool = True) -> list[int]: ...

    def special_strings(self) -> dict[str, str]: ...


class LocalTokenizer:
    """GGUF vocabulary and template here; the server only for what it renders itself."""

    exact = True

    def __init__(self, pieces: Encoder, template: str, server: ServerTokenizer) -> None:
        self.pieces = pieces
        self.template = template
        self.server = server
        self.special = pieces.special_strings()  # bos/eos text: fixed for a vocabulary
        # Request features whose rendering here equals the server's (``verify``); until
        # verified, plain string conversations render here (round one's behaviour).
        self.verified = Verified(features={PLAIN: frozenset(NORMALIZATIONS[:1])})

    async def verify(self) -> Verified:
        """Compare this template's rendering with the server's on one probe per feature;
        only the features that match render here from now on (docs/tokens.md)."""

        async def server_render(body: dict[str, Any]) -> str:
            return await self.server.render(template_body(body))

        self.verified = await verify(self.template, self.special, server_render,
                                     self.finish)  # fmt: skip
        return self.verified

    @classmethod
    def from_gguf(cls, path: Path, template: str | None, server: ServerTokenizer) -> LocalTokenizer:
        """llama.cpp's own tokenizer when libllama is installed (exact for every vocabulary
        type), else the rebuilt BPE for the pre-tokenizers it reproduces."""
        from proxy.llama_vocab import LlamaVocab, VocabUnavailable

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
        return self.finish(render(self.template, body, self.special, norm or Normalization()))

    def finish(self, text: str) -> str:
        """llama-server strips a BOS (EOS) the template wrote when the tokenizer adds one
        itself (common/chat.cpp), so that the prompt does not start with two."""
        bos, eos = self.special.get("bos_token"), self.special.get("eos_token")
        if self.pieces.add_bos and bos and text.startswith(bos):
            text = text[len(bos) :]
        if self.pieces.add_eos and eos and text.endswith(eos):
            text = text[: -len(eos)]
        return text

    def tokens_of_chat(self, body: dict[str, Any], norm: Normalization) -> list[int]:
        return self.pieces.encode(self.render(body, norm))

    def text_tokens(self, text: str) -> list[int] | None:
        return self.pieces.encode(text, add_special=False)

    async def prompt_tokens(self, conv: Conversation, body: dict[str, Any]) -> list[int] | None:
        if conv.kind == "chat":
            norm = self.verified.normalization(features(body))
            if norm is None:
                text = await self.server.render(template_body(body))
                return await asyncio.to_thread(self.pieces.encode, text)
            return await asyncio.to_thread(self.tokens_of_chat, body, norm)
        prompt = completion_prompt(body)
        if prompt is None or isinstance(prompt, list):
            return prompt
        return await asyncio.to_thread(self.pieces.encode, prompt)


CHARS_PER_TOKEN = 4


def estimate_tokens(parts: Sequence[str]) -> list[int]:
    """Pseudo-tokens: each part contributes about len/4 ids derived from its hash, so two
    prompts share a pseudo-prefix exactly as far as they share whole parts."""
    out: list[int] = []
    for part in parts:
        h = xxhash.xxh3_64_intdigest(part.encode("utf-8", "surrogatepass")) & 0x3FFFFFFF
        n = max(1, len(part) // CHARS_PER_TOKEN)
        out.extend((h + i) & 0x7FFFFFFF for i in range(n))
    return out


class EstimatedTokens:
    """For ollama upstreams: per-message estimates, never exact."""

    exact = False

    async def prompt_tokens(self, conv: Conversation, body: dict[str, Any]) -> list[int] | None:
        if conv.kind == "chat":
            parts = [f"{m.role}\n{m.content!r}" for m in conv.messages]
            if conv.tools:
                parts.insert(0, repr(thaw(conv.tools)))
            return estimate_tokens(parts)
        if isinstance(conv.prompt, str):
            return estimate_tokens([conv.prompt])
        return None

    def text_tokens(self, text: str) -> list[int] | None:
        return estimate_tokens([f"assistant\n{text!r}"])


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


def load_local(path: Path, template: str | None, server: ServerTokenizer) -> LocalTokenizer:
    """From a GGUF file or a tokenizer directory; raises TokenizerUnavailable if neither."""
    if path.is_dir():
        pieces, own = load_tokenizer_dir(path)
        chosen = template or own
        if not chosen:
            raise TokenizerUnavailable(f"no chat template in {path}")
        return LocalTokenizer(pieces, chosen, server)
    if path.is_file():
        return LocalTokenizer.from_gguf(path, template, server)
    raise TokenizerUnavailable(f"{path} is neither a GGUF file nor a tokenizer directory")


async def tokenizer_for(upstream: Any, configured: Path | None) -> Tokenizer:
    """The best tokenizer for an upstream: configured, else the server's own GGUF when it is
    readable on this host, else the server's endpoints; ollama gets estimates."""
    if upstream.kind != "llama":
        return EstimatedTokens()
    server = ServerTokenizer(upstream)
    props = upstream.props or {}
    template = props.get("chat_template") or None
    model_path = props.get("model_path")
    candidates = [configured] if configured else []
    if model_path:
        candidates.append(Path(model_path))
    for path in candidates:
        try:
            tok = await asyncio.to_thread(load_local, path, template, server)
            log.info("tokenizer_local", upstream=upstream.url, source=str(path))
        except (TokenizerUnavailable, OSError, ValueError) as exc:
            log.warning("tokenizer_local_unavailable", source=str(path), error=str(exc))
            continue
        try:
            verified = await tok.verify()
            log.info("template_verified", upstream=upstream.url, local=sorted(verified.features),
                     server=verified.refused)  # fmt: skip
        except ProxyError as exc:
            log.warning("template_unverified", upstream=upstream.url, error=exc.message)
        return tok
    log.info("tokenizer_server", upstream=upstream.url)
    return server
