"""A tiny random BERT folder (2 layers, width 32) with a WordPiece tokenizer over the
characters and words of some texts, saved by `Encoder.save` — for the retrieval tests."""

from __future__ import annotations

from pathlib import Path

from jielong.encoder import char_wordpiece, random_encoder
from jielong.tokenizer import Tokenizer


def wordpiece(texts: list[str]) -> Tokenizer:
    return char_wordpiece(texts, words=True)


def make_bert_dir(path: Path, texts: list[str], pooling: str = "cls", seed: int = 0,
                  hidden: int = 32) -> Path:
    return random_encoder(wordpiece(texts), path, hidden=hidden, layers=2, intermediate=2 * hidden,
                          max_positions=128, pooling=pooling, pooler=True, seed=seed)
