"""Inference: one sampler, plain generation, the continuous-batching engine that serves, the
terminal chat, and fitting a conversation to the context."""
