"""Look inside the model: the next-token view, attention, embeddings, logit lens, scaling."""
