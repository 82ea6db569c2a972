"""Small recurrent and hybrid GGUF models for the reuse tests (issue 11, point 3).

No recurrent or hybrid model can be installed here (PyPI, Debian and npm carry none), so
these are written with llama.cpp's own ``gguf`` package: a Mamba model (every layer a state
space layer) and a Jamba model (a Mamba layer and an attention layer: hybrid memory), with
random weights and the bundled SmolLM2's tokenizer and chat template copied in. What they
say is noise; what matters is that llama-server loads them with the same recurrent and
hybrid memory as Mamba, Granite 4 or Qwen3.5, so its reuse rules (one state per slot,
context checkpoints, slot files) can be measured against kvproxy's predictions.

``python -m tests.synthetic_gguf mamba|jamba [DIR]`` writes one and prints its path.
"""

from __future__ import annotations

import sys
from pathlib import Path

import gguf
import numpy as np

from proxy.backends.embedded import bundled_model

ARCHES = ("mamba", "jamba")
EMBD, INNER, STATE, CONV, DT_RANK, FF = 64, 128, 16, 4, 4, 128  # Mamba: inner = 2 x embd


def write(arch: str, out: Path) -> Path:
    """Write the ``arch`` model to ``out`` (deterministic: same bytes every time)."""
    if arch not in ARCHES:
        raise ValueError(f"arch must be one of {ARCHES}")
    attention = [False, arch == "jamba"]  # per layer: attention (hybrid) or state space
    source = gguf.GGUFReader(str(bundled_model()))
    writer = gguf.GGUFWriter(str(out), arch)
    writer.add_context_length(8192)
    writer.add_embedding_length(EMBD)
    writer.add_block_count(len(attention))
    writer.add_feed_forward_length(FF)
    writer.add_head_count(4 if any(attention) else 0)
    if any(attention):
        writer.add_head_count_kv([2 if a else 0 for a in attention])
    writer.add_ssm_conv_kernel(CONV)
    writer.add_ssm_inner_size(INNER)
    writer.add_ssm_state_size(STATE)
    writer.add_ssm_time_step_rank(DT_RANK)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    for name, field in source.fields.items():
        if name.startswith("tokenizer."):
            kind = field.types[0]
            sub = field.types[1] if kind == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(name, field.contents(), kind, sub_type=sub)
    vocab = len(source.fields["tokenizer.ggml.tokens"].data)
    rng = np.random.default_rng(0)

    def random(name: str, *shape: int) -> None:  # numpy order: ggml's reversed
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))

    def ones(name: str, *shape: int, value: float = 1.0) -> None:
        writer.add_tensor(name, np.full(shape, value, np.float32))

    random("token_embd.weight", vocab, EMBD)
    ones("output_norm.weight", EMBD)
    for i, attn in enumerate(attention):
        ones(f"blk.{i}.attn_norm.weight", EMBD)
        if attn:
            random(f"blk.{i}.attn_q.weight", EMBD, EMBD)
            random(f"blk.{i}.attn_k.weight", EMBD // 2, EMBD)
            random(f"blk.{i}.attn_v.weight", EMBD // 2, EMBD)
            random(f"blk.{i}.attn_output.weight", EMBD, EMBD)
        else:
            random(f"blk.{i}.ssm_in.weight", 2 * INNER, EMBD)
            random(f"blk.{i}.ssm_conv1d.weight", INNER, CONV)
            random(f"blk.{i}.ssm_conv1d.bias", INNER)
            random(f"blk.{i}.ssm_x.weight", DT_RANK + 2 * STATE, INNER)
            random(f"blk.{i}.ssm_dt.weight", INNER, DT_RANK)
            random(f"blk.{i}.ssm_dt.bias", INNER)
            ones(f"blk.{i}.ssm_a", INNER, STATE, value=-1.0)
            ones(f"blk.{i}.ssm_d", INNER)
            random(f"blk.{i}.ssm_out.weight", EMBD, INNER)
            if arch == "jamba":
                ones(f"blk.{i}.ssm_dt_norm.weight", DT_RANK)
                ones(f"blk.{i}.ssm_b_norm.weight", STATE)
                ones(f"blk.{i}.ssm_c_norm.weight", STATE)
        if arch == "jamba":
            ones(f"blk.{i}.ffn_norm.weight", EMBD)
            random(f"blk.{i}.ffn_gate.weight", FF, EMBD)
            random(f"blk.{i}.ffn_up.weight", FF, EMBD)
            random(f"blk.{i}.ffn_down.weight", EMBD, FF)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ARCHES:
        print(f"usage: python -m tests.synthetic_gguf {'|'.join(ARCHES)} [DIR]", file=sys.stderr)
        return 2
    folder = Path(argv[1]) if len(argv) > 1 else Path(".")
    folder.mkdir(parents=True, exist_ok=True)
    print(write(argv[0], folder / f"synthetic-{argv[0]}.gguf"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
