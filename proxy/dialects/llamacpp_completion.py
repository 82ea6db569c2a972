"""llama-server's native ``POST /completion`` (and its alias ``/completions``)."""

from __future__ import annotations

from dataclasses import dataclass

from proxy.dialects.openai_completions import OpenAICompletions


@dataclass(frozen=True)
class LlamaCppCompletion(OpenAICompletions):
    """Same body layout as OpenAI completions (prompt, stream, free-form params such as
    ``n_predict``); the prompt may also hold token ids, which pass through untouched."""

    name: str = "llamacpp_completion"
    family: str = "llamacpp"
    framing: str = "sse"
    path: str = "/completion"


DIALECT = LlamaCppCompletion()
