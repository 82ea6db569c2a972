"""What kvproxy reads from a GGUF's metadata: the vocabulary (for the rebuilt BPE) and the
model's attention kind.

The attention kind decides what llama-server can reuse (server-context.cpp): a dense KV
cache keeps every position, so any common prefix is reused and a saved slot file resumes
where it stopped. A sliding-window model (Gemma 2/3/4, gpt-oss) keeps only the last
``window`` positions of its SWA layers and a recurrent or hybrid one (Mamba, RWKV, Jamba,
Granite 4, LFM2, Qwen3-Next) keeps one state: the server can then go back only to a
context checkpoint. A restored slot file was measured to resume nothing on the sliding
window (issue 11: Gemma 3 270M, 8 restores, 0 tokens reused each time), so kvproxy neither
saves nor restores slot files there; on recurrent and hybrid models it resumes the whole
file when the prompt extends it (measured on Mamba and Jamba, tests/synthetic_gguf.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy.tokens.base import TokenizerUnavailable

# Metadata key fragments of recurrent state (llama-arch.cpp): SSM (Mamba, Jamba, Granite 4,
# Falcon-H1, Nemotron-H, Qwen3-Next), WKV (RWKV) and short convolutions (LFM2).
RECURRENT_KEYS = (".ssm.", ".wkv.", ".shortconv.", ".time_mix_extra_dim", ".rescale_every_n_layers")


@dataclass(frozen=True)
class AttentionKind:
    kind: str = "dense"  # "dense", "sliding-window" or "recurrent"
    window: int | None = None  # sliding window, in tokens
    arch: str | None = None

    @property
    def resumes_from_file(self) -> bool:
        """A restored slot file brings its prefix back: dense models, and recurrent ones
        when the prompt extends the whole file (``SavedCatalog.best``)."""
        return self.kind in ("dense", "recurrent")


def attention_kind(path: Path) -> AttentionKind:
    """The model's attention kind; dense when the file cannot be read."""
    import gguf

    try:
        fields = gguf.GGUFReader(str(path)).fields
    except (OSError, ValueError):
        return AttentionKind()
    arch_field = fields.get("general.architecture")
    arch = arch_field.contents() if arch_field is not None else None
    if any(fragment in key for key in fields for fragment in RECURRENT_KEYS):
        return AttentionKind("recurrent", None, arch)
    window = fields.get(f"{arch}.attention.sliding_window") if arch else None
    if window is not None:
        size = window.contents()
        if isinstance(size, int) and size > 0:
            return AttentionKind("sliding-window", size, arch)
    return AttentionKind("dense", None, arch)


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
