"""Look inside a language model: next-token view, attention, embeddings, logit lens, n-gram baseline, sweeps."""
