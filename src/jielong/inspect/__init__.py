"""Look inside a model: the next-token view, attention maps and more (issue 21)."""
