"""The package's registry (proxy/dialects/__init__.py): every path to its dialect."""

from __future__ import annotations

from proxy.dialects import REGISTRY


def test_registry_covers_every_dialect_path() -> None:
    assert {d.name for d in REGISTRY.values()} == {
        "openai_chat",
        "openai_completions",
        "llamacpp_completion",
        "ollama_chat",
        "ollama_generate",
        "anthropic_messages",
        "openai_responses",
    }
    for path, dialect in REGISTRY.items():
        assert path == dialect.path or path in ("/chat/completions", "/completions")
