"""Everything a server kind does: the HTTP upstream, ollama's cache keeping, the bridges
between dialects and kinds, the embedded llama-server.
"""
