"""jielong (接龍): a language model's whole life in one hackable PyTorch codebase."""

__version__ = "0.1.0"
