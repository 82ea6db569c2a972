"""The upstream's own tokens for a request: chat template rendered and tokenized as the
server does.

Three ways, best first (``choice.tokenizer_for`` picks one per upstream at start):
- ``LocalTokenizer`` (local.py): the GGUF's vocabulary loaded into llama.cpp's own tokenizer
  (llama.py; the rebuilt BPE of bpe.py when libllama is absent) and the chat template
  rendered here (templates.py), trusted for the request shapes verified against the server.
- ``ServerTokenizer`` (server.py): llama-server's ``/apply-template`` and ``/tokenize``
  (exact, one round trip each), when the GGUF is not readable here.
- ``EstimatedTokens`` (estimate.py): for ollama (Go templates), per-message pseudo-tokens
  whose prefix structure follows the messages; records say ``estimated``.
"""

from proxy.tokens.base import Tokenizer, TokenizerUnavailable
from proxy.tokens.choice import load_local, tokenizer_for
from proxy.tokens.estimate import EstimatedTokens
from proxy.tokens.local import LocalTokenizer
from proxy.tokens.server import ServerTokenizer

__all__ = [
    "EstimatedTokens",
    "LocalTokenizer",
    "ServerTokenizer",
    "Tokenizer",
    "TokenizerUnavailable",
    "load_local",
    "tokenizer_for",
]
