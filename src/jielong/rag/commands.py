"""`jielong rag index` and `jielong rag search`: build an index of your documents, and look
into it (retrieval alone, to see what a question would be answered from).

Run as:
    jielong rag index docs/ notes.md --out runs/index
    jielong rag search "退貨要幾天" --index runs/index --k 5

`rag index` reads txt, Markdown, HTML, PDF, JSONL (--field) and SQuAD-style JSON
(jielong.rag.ingest), cuts them into chunks of --chunk_tokens with --overlap (chunk.py),
and builds BM25 (sparse.py) and, with --embedder, dense vectors (index.py). Run it again
over the same PATHs after editing: only the changed files are read again. A file it cannot
read is skipped and listed with its reason; the rest are indexed.

`rag search` prints the ranked passages with their source file, page, heading and score.
--embedder is a Hugging Face BERT / XLM-R folder (jielong.encoder); its pooling is the one its
sentence-transformers files declare, and the index remembers it: a query embedded by another
model is refused.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

import numpy as np

from jielong.encoder import Encoder
from jielong.rag.chunk import OVERLAP, SIZE
from jielong.rag.index import Hit, Index, build_index
from jielong.tokenizer import use_color


class EncoderEmbedder:
    """A jielong.encoder.Encoder folder as an embedder: name "encoder:DIR_NAME:POOLING",
    vectors L2-normalised (whatever the folder says, so that dot product is cosine)."""

    def __init__(self, path: str | Path):
        self.encoder = Encoder.load(path, normalize=True)
        self.name = f"encoder:{Path(path).resolve().name}:{self.encoder.pooling}"
        self.dim = self.encoder.config.hidden_size

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.encoder.embed(texts).numpy().astype(np.float32)


def index_cmd(paths: list[str], out: str = "runs/rag-index", chunk_tokens: int = SIZE, overlap: int = OVERLAP,
              field: str = "text", tokenizer: Literal["jieba", "bigram", "whitespace"] = "jieba",
              embedder: str | None = None):
    """Index documents (txt, md, html, pdf, jsonl, SQuAD json; folders recursively) for retrieval.

    Args:
        paths: files and folders to index; the index holds what is under them now (files gone
            since the last run are removed, unchanged files are not read again)
        out: the index folder
        chunk_tokens: tokens per chunk (a CJK character or a word is one token)
        overlap: tokens of whole sentences repeated at the start of the next chunk
        field: the text field of a JSONL file's rows
        tokenizer: BM25 words: jieba (Chinese words, 繁→简 folded), bigram (Chinese character
            pairs), whitespace (str.split: the common bug, Chinese scores 0)
        embedder: an encoder folder (Hugging Face BERT / XLM-R) for dense vectors
    """
    emb = EncoderEmbedder(embedder) if embedder else None
    report = build_index(paths, out, embedder=emb, chunk_tokens=chunk_tokens, overlap=overlap,
                         field=field, tokenizer=tokenizer)
    print(f"{len(report.indexed)} files indexed, {len(report.unchanged)} unchanged, "
          f"{len(report.removed)} removed, {len(report.skipped)} skipped; {report.chunks} chunks"
          + (f" ({report.embedded} embedded)" if emb else "") + f" in {out}")
    for path, reason in report.skipped:
        print(f"  skipped {path}: {reason}")
    return report


def search_cmd(query: str, index: str = "runs/rag-index", k: int = 5,
               method: Literal["bm25", "dense", "hybrid"] = "bm25", embedder: str | None = None):
    """The passages of an index that best match a query, with source, page, heading and score.

    Args:
        query: the question or words to look for
        index: the index folder (`jielong rag index … --out INDEX`)
        k: how many passages
        method: bm25, dense (needs --embedder) or hybrid (reciprocal rank fusion of the two)
        embedder: the encoder folder the index was built with (for dense and hybrid)
    """
    idx = Index.load(index, embedder=EncoderEmbedder(embedder) if embedder else None)
    hits = idx.search(query, k=k, method=method)
    if not hits:
        print("no passage shares a word with the query")
    color = use_color(sys.stdout)
    for h in hits:
        print(format_hit(h, color))
    return hits


def format_hit(h: Hit, color: bool = False) -> str:
    c = h.chunk
    paint = (lambda code, s: f"\033[{code}m{s}\033[0m") if color else (lambda code, s: s)
    where = [paint("36", c.source)]
    if c.page is not None:
        where.append(f"p. {c.page}")
    if c.heading:
        where.append(paint("33", c.heading))
    head = f"{paint('1', f'[{h.rank}]')} {'  '.join(where)}  {paint('2', f'{h.method} {h.score:.4g}')}"
    body = " ".join(c.text.split())  # one line; the terminal wraps it (CJK is two columns wide)
    return f"{head}\n    {body[:300] + ' …' if len(body) > 300 else body}"
