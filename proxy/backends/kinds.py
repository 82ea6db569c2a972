"""What each server kind does differently with a dialect request, in one table.

A kind answers two questions: which upstream call carries a client's request (the same
path in its own dialect, or a bridge to the server's own API), and what the body must carry
on its way (slot pinning on llama-server; a stable ``num_ctx`` and a long ``keep_alive`` on
ollama). Each kind is one module (``llama_server``, ``ollama``) implementing ``base.Backend``;
adding a kind is one module and one entry in ``KINDS``.
"""

from __future__ import annotations

from proxy.backends.base import Backend
from proxy.backends.llama_server import LlamaServer
from proxy.backends.ollama import Ollama

KINDS: dict[str, Backend] = {"llama": LlamaServer(), "ollama": Ollama()}


def backend_for(kind: str) -> Backend:
    return KINDS[kind]
