"""Which tokenizer an upstream gets at start."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from proxy.backends.kinds import KINDS
from proxy.tokens import EstimatedTokens, ServerTokenizer, tokenizer_for
from proxy.tokens.base import TokenizerUnavailable
from proxy.tokens.choice import load_local
from tests.unit.tokens.stubs import CannedUpstream


class Ollama:
    kind = "ollama"


@pytest.mark.parametrize(
    ("props", "configured", "server_only"),
    [
        ({}, None, False),  # no model path: the server's endpoints
        ({"model_path": "/nonexistent/model.gguf"}, None, False),  # not readable here
        ({}, Path("/nonexistent/tok.gguf"), False),  # configured but missing: said, then server
        ({"model_path": "/nonexistent/model.gguf"}, Path("/x.gguf"), True),  # --tokenizer server
    ],
)
async def test_the_server_tokenizes_when_no_gguf_is_readable(
    props: dict[str, Any], configured: Path | None, server_only: bool
) -> None:
    up = CannedUpstream({}, props=props)
    assert isinstance(await tokenizer_for(up, configured, server_only), ServerTokenizer)


async def test_ollama_gets_estimates() -> None:
    exact = KINDS["ollama"].tokenizes  # no tokenizer endpoints
    assert isinstance(await tokenizer_for(Ollama(), None, exact=exact), EstimatedTokens)


def test_load_local_refuses_what_is_neither_file_nor_directory(tmp_path: Path) -> None:
    with pytest.raises(TokenizerUnavailable):
        load_local(tmp_path / "missing", None, ServerTokenizer(None))
