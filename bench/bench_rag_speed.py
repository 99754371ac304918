"""Speed and size of the BM25 index at 10k and 100k chunks: indexing chunks/s (`build_index`
end to end: reading, chunking, jieba, bm25s, writing), query p50/p95 (`Index.search`, k=5),
the index's size on disk and the memory it takes loaded; and bm25s (what jielong uses) beside
rank-bm25 (BM25Okapi, pure Python + NumPy) on the same token lists.

Run as:  .venv/bin/python bench/bench_rag_speed.py [--data ../shared/data] [--sizes 10000 100000]

The chunks are synthetic: the sentences of DRCD dev (繁) and CMRC 2018 dev (简) paragraphs,
shuffled with a fixed seed and packed 6 to a chunk (about 200 characters), repeating the pool
as often as needed; the queries are 200 of the sets' questions. rank-bm25's queries are fewer
at 100k (it scores every document in Python for each query word).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bm25s
import numpy as np
from rank_bm25 import BM25Okapi  # the bench's peer, not a jielong dependency

from jielong.rag.index import Index, build_index
from jielong.rag.sparse import tokenize

SENT = re.compile(r"[^。！？]+[。！？]?")


def pool(data: Path) -> tuple[list[str], list[str]]:
    sentences, questions = [], []
    for name in ("drcd-dev.json", "cmrc2018-dev.json"):
        for article in json.loads((data / name).read_text(encoding="utf-8"))["data"]:
            for p in article["paragraphs"]:
                sentences += [s for s in SENT.findall(p["context"]) if len(s) > 4]
                questions += [qa["question"] for qa in p["qas"]]
    return sentences, questions


def chunks(sentences: list[str], n: int, per: int = 6, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out, bag = [], []
    while len(out) < n:
        if len(bag) < per:
            bag += rng.sample(sentences, len(sentences))
        out.append("".join(bag[:per]))
        bag = bag[per:]
    return out


LOAD = """
import os, sys
from jielong.rag.index import Index
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
before = rss(); idx = Index.load(sys.argv[1]); print(rss() - before)
"""


def loaded_mb(index: Path) -> float:
    """Resident memory an index takes once loaded, in a fresh process (after the imports)."""
    out = subprocess.run([sys.executable, "-c", LOAD, str(index)], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    args = ap.parse_args()
    sentences, questions = pool(args.data)
    queries = random.Random(1).sample(questions, 200)
    print(f"pool: {len(sentences)} sentences, {len(questions)} questions")
    print("| chunks | index s | chunks/s | query p50 ms | p95 ms | disk MB | loaded MB "
          "| rank-bm25 build s (tokens given) | its p50 ms | p95 ms | bm25s build s (tokens given) |")
    print("| --- " * 11 + "|")
    for n in args.sizes:
        texts = chunks(sentences, n)
        tmp = Path(tempfile.mkdtemp(prefix="bench-rag-"))
        try:
            src = tmp / "chunks.jsonl"
            src.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts),
                           encoding="utf-8")
            t0 = time.perf_counter()
            report = build_index([src], tmp / "index", chunk_tokens=512, overlap=0, progress=False)
            took = time.perf_counter() - t0
            disk = sum(f.stat().st_size for f in (tmp / "index").rglob("*") if f.is_file()) / 2**20
            loaded = loaded_mb(tmp / "index")
            idx = Index.load(tmp / "index")
            idx.search(queries[0], 5)  # warm
            ours = []
            for q in queries:
                t = time.perf_counter()
                idx.search(q, 5)
                ours.append(time.perf_counter() - t)
            # the same token lists for both libraries: tokenizing is timed in "index s" above
            tokens = [tokenize(c.indexed_text()) for c in idx.chunks]
            t = time.perf_counter()
            vocab: dict[str, int] = {}
            ids = [[vocab.setdefault(w, len(vocab)) for w in doc] for doc in tokens]
            bm25s.BM25().index((ids, vocab), create_empty_token=False, show_progress=False)
            bm25s_build = time.perf_counter() - t
            t = time.perf_counter()
            okapi = BM25Okapi(tokens)
            rank_build = time.perf_counter() - t
            theirs = []
            for q in queries[: 200 if n <= 10_000 else 30]:
                qt = tokenize(q)
                t = time.perf_counter()
                np.argsort(-okapi.get_scores(qt))[:5]
                theirs.append(time.perf_counter() - t)
            print(f"| {report.chunks:,} | {took:.1f} | {report.chunks / took:,.0f} | {pct(ours, 50):.1f} "
                  f"| {pct(ours, 95):.1f} | {disk:.1f} | {loaded:.0f} | {rank_build:.1f} | {pct(theirs, 50):.0f} "
                  f"| {pct(theirs, 95):.0f} | {bm25s_build:.1f} |", flush=True)
            del idx, okapi
        finally:
            shutil.rmtree(tmp)
    print(f"max RSS of this process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
