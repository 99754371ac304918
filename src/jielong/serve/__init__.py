"""Serving: an OpenAI-compatible API and a web chat whose ratings and edits feed the next
round of tuning, on FastAPI, with a SQLite store and Prometheus metrics."""
