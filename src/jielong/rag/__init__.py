"""Retrieval over the user's documents: ingest, chunking, BM25 and dense search, answers with
citations."""
