"""The kvproxy command: serve, stats, tail, explain, doctor, tokenize (``main``)."""
