"""What kind of attention memory a model has, read from its GGUF metadata.

It decides what llama-server can reuse (server-context.cpp): a dense KV cache keeps every
position, so any common prefix is reused and a saved slot file resumes where it stopped. A
sliding-window model (Gemma 2/3/4, gpt-oss) keeps only the last ``window`` positions of its
SWA layers and a recurrent or hybrid one (Mamba, RWKV, Jamba, Granite 4, LFM2, Qwen3-Next)
keeps one state: the server can then go back only to a context checkpoint, and a restored
slot file was measured to resume nothing (issue 11: Gemma 3 270M, 8 restores, 0 tokens
reused each time), so kvproxy neither saves nor restores slot files for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
        """A saved slot file brings the whole prefix back (dense models only)."""
        return self.kind == "dense"


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
