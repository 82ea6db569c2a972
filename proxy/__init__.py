"""kvproxy: a cache-aware proxy for llama-server and ollama."""

__version__ = "0.1.0"
