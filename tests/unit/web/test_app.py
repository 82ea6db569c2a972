"""The application factory's pure pieces."""

from __future__ import annotations

import pytest

from proxy.tokens.gguf import AttentionKind
from proxy.web.app import SWA_TAIL_TOKENS, swa_tail


@pytest.mark.parametrize(
    ("kind", "swa_full", "tail"),
    [
        ("dense", False, None),  # any common prefix is reused
        ("dense", True, None),
        ("sliding-window", False, SWA_TAIL_TOKENS),
        ("sliding-window", True, None),  # --swa-full: the server keeps the whole cache
        ("recurrent", False, SWA_TAIL_TOKENS),
        ("recurrent", True, SWA_TAIL_TOKENS),
    ],
)
def test_swa_tail_by_attention_kind(kind: str, swa_full: bool, tail: int | None) -> None:
    assert swa_tail(AttentionKind(kind), swa_full) == tail
