"""Attention kinds from GGUF metadata (synthetic GGUFs written with the gguf package)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from proxy.tokens.gguf import AttentionKind, attention_kind


def write_gguf(path: Path, arch: str, extra: dict[str, Any]) -> Path:
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    for key, value in extra.items():
        writer.add_uint32(key, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return path


@pytest.mark.parametrize(
    ("arch", "extra", "expected"),
    [
        ("llama", {"llama.context_length": 8192}, AttentionKind("dense", None, "llama")),
        ("gemma3", {"gemma3.attention.sliding_window": 512},
         AttentionKind("sliding-window", 512, "gemma3")),
        ("mamba", {"mamba.ssm.state_size": 16}, AttentionKind("recurrent", None, "mamba")),
        ("granitehybrid", {"granitehybrid.ssm.conv_kernel": 4},
         AttentionKind("recurrent", None, "granitehybrid")),
        ("lfm2", {"lfm2.shortconv.l_cache": 3}, AttentionKind("recurrent", None, "lfm2")),
    ],
)  # fmt: skip
def test_attention_kind(tmp_path: Path, arch: str, extra: dict[str, Any],
                        expected: AttentionKind) -> None:  # fmt: skip
    kind = attention_kind(write_gguf(tmp_path / "m.gguf", arch, extra))
    assert kind == expected
    assert kind.resumes_from_file is (expected.kind != "sliding-window")


def test_an_unreadable_file_is_taken_as_dense(tmp_path: Path) -> None:
    (tmp_path / "x.gguf").write_bytes(b"not a gguf")
    assert attention_kind(tmp_path / "x.gguf") == AttentionKind()


def test_the_bundled_model_is_dense() -> None:
    from proxy.backends.embedded import bundled_model

    assert attention_kind(bundled_model()).kind == "dense"
