"""What kvproxy remembers of each request: the record, its LMDB store, metrics and summaries."""
