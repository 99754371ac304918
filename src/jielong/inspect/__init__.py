"""Looking inside a model: next tokens, attention, contextual embeddings, the logit lens."""
