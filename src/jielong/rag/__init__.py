"""Retrieval over the user's own documents: ingest (ingest.py), chunking (chunk.py), a
Chinese-aware BM25 (sparse.py), an index with exact dense search and hybrid fusion
(index.py), and the `jielong rag` commands (commands.py)."""
