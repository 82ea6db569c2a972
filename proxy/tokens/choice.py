"""The best tokenizer for an upstream, chosen at start: configured, else the server's own
GGUF when it is readable here, else the server's endpoints; ollama gets estimates."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path
from typing import Any

from proxy.core.errors import ProxyError
from proxy.core.log import get_logger
from proxy.tokens.base import Tokenizer, TokenizerUnavailable
from proxy.tokens.bpe import load_tokenizer_dir
from proxy.tokens.estimate import EstimatedTokens
from proxy.tokens.local import LocalTokenizer
from proxy.tokens.server import ServerTokenizer

log = get_logger("kvproxy.tokens")


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


async def tokenizer_for(upstream: Any, configured: Path | None, server_only: bool = False,
                        exact: bool = True) -> Tokenizer:  # fmt: skip
    """The best tokenizer for an upstream: configured, else the server's own GGUF when it is
    readable on this host, else the server's endpoints; a server kind with no tokenizer
    endpoints (``exact`` false: ollama) gets estimates."""
    if not exact:
        return EstimatedTokens()
    server = ServerTokenizer(upstream)
    props = upstream.props or {}
    template = props.get("chat_template") or None
    model_path = props.get("model_path")
    candidates = [configured] if configured and not server_only else []
    if model_path and not server_only:
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
        gc.freeze()  # the vocabulary lives as long as the process: out of the GC's scans
        return tok
    log.info("tokenizer_server", upstream=upstream.url)
    return server
