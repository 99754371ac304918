"""Look inside a language model: the next-token view, attention, contextual embeddings, logit
lens, an n-gram baseline, scaling sweeps, tokenizers compared."""
