"""Retrieval over the user's own documents: ingest (ingest.py), chunking (chunk.py), a
Chinese-aware BM25 (sparse.py), embedders (embed.py: jielong.encoder folders or a decoder's
pooled states), an index with exact dense search, faiss HNSW for large collections (ann.py)
and hybrid fusion (index.py), a cross-encoder reranker (rerank.py), answers with citations
(answer.py), and the `jielong rag` commands (commands.py)."""
