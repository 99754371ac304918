"""Agents: a model that calls tools in a loop (`jielong agent`), its built-in tools (a
calculator, search over a RAG index, the date, a Python sandbox) and user tools from
FILE.py:FUNCTION."""
