"""BM25 with each tokenizer of jielong.rag.sparse on DRCD dev (繁) and CMRC 2018 dev (简): every
paragraph of the set is the corpus, each question's gold is its own paragraph; recall@1/5/20
and MRR, with 简 queries (OpenCC s2t / t2s of the questions) against the other script too.

Run as:  .venv/bin/python bench/bench_rag_tokenizers.py [--data ../shared/data]

Measures jieba's search mode against its plain mode (the choice sparse.py makes), character
bigrams, and the whitespace tokenizer (the bug: Chinese scores 0).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from jielong.prep.language import converter
from jielong.rag.sparse import Sparse, tokenize

TOKENIZERS = {"jieba (search mode)": ("jieba", True), "jieba (plain)": ("jieba", False),
              "bigram": ("bigram", True), "whitespace": ("whitespace", True)}


def squad(path: Path) -> tuple[list[str], list[tuple[str, int]]]:
    paragraphs, questions = [], []
    for article in json.loads(path.read_text(encoding="utf-8"))["data"]:
        for p in article["paragraphs"]:
            questions += [(qa["question"], len(paragraphs)) for qa in p["qas"]]
            paragraphs.append(p["context"])
    return paragraphs, questions


def ranks(bm25: Sparse, queries: list[list[str]], gold: list[int]) -> np.ndarray:
    """1-based rank of each gold paragraph (ties broken against it; 0 score = not found)."""
    out = []
    for q, g in zip(queries, gold, strict=True):
        s = bm25.scores(q)
        out.append(int((s >= s[g]).sum()) if s[g] > 0 else 10**9)
    return np.array(out)


def row(name: str, r: np.ndarray) -> str:
    rec = [f"{(r <= k).mean():.3f}" for k in (1, 5, 20)]
    mrr = np.where(r < 10**9, 1.0 / r, 0.0).mean()
    return f"| {name} | {' | '.join(rec)} | {mrr:.3f} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    args = ap.parse_args()
    print("| set / tokenizer | R@1 | R@5 | R@20 | MRR |\n| --- | --- | --- | --- | --- |")
    for file, other in (("drcd-dev.json", "t2s"), ("cmrc2018-dev.json", "s2t")):
        paragraphs, qs = squad(args.data / file)
        gold = [g for _, g in qs]
        for name, (kind, search) in TOKENIZERS.items():
            t0 = time.perf_counter()
            bm25 = Sparse.build([tokenize(p, kind, search) for p in paragraphs])
            built = time.perf_counter() - t0
            r = ranks(bm25, [tokenize(q, kind, search) for q, _ in qs], gold)
            print(row(f"{file} / {name} (index {built:.1f} s)", r))
            if name == "jieba (search mode)":
                cross = [tokenize(converter(other).convert(q), kind, search) for q, _ in qs]
                print(row(f"{file} / {name}, questions {other}", ranks(bm25, cross, gold)))


if __name__ == "__main__":
    main()
