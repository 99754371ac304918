"""Using a model: the one sampler (`sampling`), batched generation (`generate`, `jielong
generate`), the terminal chat (`chat`, `jielong chat`) and how a chat fits the context
(`context`), and the serving engine with continuous batching (`engine`)."""
