"""Looking inside a model: its tokens, next-token choices, attention, embeddings and layers."""
