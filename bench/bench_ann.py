"""Which approximate-nearest-neighbour library the dense index uses: faiss-cpu (HNSW and
IVF-Flat), usearch and hnswlib on the same vectors, against exact search.

    python bench/bench_ann.py                          # 10k and 100k, random and text vectors
    python bench/bench_ann.py --sizes 10000 --kinds random --queries 200   # quick
    python bench/bench_ann.py --data /path/to/shared/data     # where the poems are

Two kinds of unit vectors, `--dim` wide (default 384, bge-small-zh's is 512, text2vec's 768):
- random: Gaussian, normalised — no structure at all, the hardest case for a graph index
  (every point is about equally far from every other);
- text: lines of the shared Tang poems (繁) and Song ci (简), TF-IDF over character
  1–2-grams (hashed into 2^18 features), randomly projected to `--dim` and normalised.
  Not a neural embedding, but vectors with the clustered, lopsided shape of real text;
  the queries are lines held out of the collection.

Every library gets the same graph settings — M (connectivity) 16, 128 candidates while
building, `--ef` (default 64) while searching; IVF-Flat gets 4·√n lists and probes 16 of
them — and one thread (the box has two cores, shared), so the figures compare the
libraries, not the thread counts. Scores are inner products (cosine on unit vectors).
Measured per library: build seconds, single-query latency p50/p95 over `--queries`
queries, recall@10 against exact search (numpy, q · Vᵀ), the index file's size (each
library's own format, no pickle) and the process's resident memory growth while building.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import faiss
import hnswlib
import numpy as np
import psutil
from usearch.index import Index as UsearchIndex

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
M, EF_BUILD = 16, 128  # --m changes M


def random_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def text_vectors(n: int, n_queries: int, dim: int, seed: int, data: Path = DATA) -> tuple[np.ndarray, np.ndarray]:
    """(collection, queries) from distinct poem lines; see the module docstring."""
    from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer
    from sklearn.random_projection import SparseRandomProjection

    lines: list[str] = []
    seen = set()
    for name in ("tang-poems-zh-hant.jsonl", "song-ci-zh-hans.jsonl"):
        with open(data / name, encoding="utf-8") as f:
            for row in f:
                for line in json.loads(row)["text"].split("\n")[2:]:  # after title and author
                    for part in line.replace("。", "。\n").split("\n"):
                        if len(part) >= 5 and part not in seen:
                            seen.add(part)
                            lines.append(part)
    need = n + n_queries
    if len(lines) < need:
        raise SystemExit(f"only {len(lines):,} distinct lines; ask for at most {len(lines) - n_queries:,}")
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(lines), need, replace=False)
    texts = [lines[i] for i in pick]
    counts = HashingVectorizer(analyzer="char", ngram_range=(1, 2), n_features=2**18,
                               alternate_sign=False, norm=None).transform(texts)
    tfidf = TfidfTransformer(sublinear_tf=True).fit_transform(counts)
    x = SparseRandomProjection(dim, random_state=seed).fit_transform(tfidf)
    x = np.asarray(x.todense() if hasattr(x, "todense") else x, dtype=np.float32)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x[:n], x[n:]


# ------------------------------------------------------------------------------ contenders


class Faiss:
    def __init__(self, kind: str, ef: int):
        self.kind, self.ef = kind, ef
        self.name = f"faiss {kind}"

    def build(self, x: np.ndarray) -> None:
        d = x.shape[1]
        if self.kind == "HNSW":
            self.index = faiss.IndexHNSWFlat(d, M, faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efConstruction = EF_BUILD
            self.index.add(x)
            self.index.hnsw.efSearch = self.ef
        else:
            nlist = int(4 * len(x) ** 0.5)
            quantizer = faiss.IndexFlatIP(d)
            self.index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            self.index.train(x)
            self.index.add(x)
            self.index.nprobe = 16

    def search(self, q: np.ndarray, k: int) -> np.ndarray:
        return self.index.search(q, k)[1]

    def save(self, path: str) -> None:
        faiss.write_index(self.index, path)


class Usearch:
    name = "usearch HNSW"

    def __init__(self, ef: int):
        self.ef = ef

    def build(self, x: np.ndarray) -> None:
        self.index = UsearchIndex(ndim=x.shape[1], metric="ip", dtype="f32", connectivity=M,
                                  expansion_add=EF_BUILD, expansion_search=self.ef)
        self.index.add(np.arange(len(x)), x, threads=1)

    def search(self, q: np.ndarray, k: int) -> np.ndarray:
        return self.index.search(q, k, threads=1).keys

    def save(self, path: str) -> None:
        self.index.save(path)


class Hnswlib:
    name = "hnswlib HNSW"

    def __init__(self, ef: int):
        self.ef = ef

    def build(self, x: np.ndarray) -> None:
        self.index = hnswlib.Index(space="ip", dim=x.shape[1])
        self.index.init_index(max_elements=len(x), ef_construction=EF_BUILD, M=M)
        self.index.set_num_threads(1)
        self.index.add_items(x, np.arange(len(x)))
        self.index.set_ef(self.ef)

    def search(self, q: np.ndarray, k: int) -> np.ndarray:
        return self.index.knn_query(q, k)[0]

    def save(self, path: str) -> None:
        self.index.save_index(path)


# ------------------------------------------------------------------------------- measuring


def rss() -> int:
    return psutil.Process().memory_info().rss


def measure(lib, x: np.ndarray, q: np.ndarray, exact: np.ndarray, k: int) -> dict:
    gc.collect()
    before = rss()
    t = time.perf_counter()
    lib.build(x)
    build = time.perf_counter() - t
    grown = rss() - before
    times, found = [], []
    for row in q:  # one query at a time: what a user's search does
        t = time.perf_counter()
        ids = lib.search(row[None], k)
        times.append(time.perf_counter() - t)
        found.append(np.asarray(ids).reshape(-1)[:k])
    recall = np.mean([len(set(f.tolist()) & set(e.tolist())) / k for f, e in zip(found, exact, strict=True)])
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "index")
        lib.save(path)
        size = os.path.getsize(path)
    ms = np.array(times) * 1000
    return {"library": lib.name, "build_s": round(build, 2), "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p95_ms": round(float(np.percentile(ms, 95)), 3), "recall@10": round(float(recall), 4),
            "file_mb": round(size / 2**20, 1), "rss_mb": round(grown / 2**20, 1)}


def exact_search(x: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, list[float]]:
    ids, times = [], []
    for row in q:
        t = time.perf_counter()
        s = x @ row
        top = np.argpartition(-s, k)[:k]
        ids.append(top[np.argsort(-s[top])])
        times.append(time.perf_counter() - t)
    return np.array(ids), (np.array(times) * 1000).tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--kinds", default="random,text")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--ef", type=int, default=64)
    ap.add_argument("--m", type=int, default=16, help="graph degree (connectivity) of every HNSW")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--libs", default="faiss-hnsw,faiss-ivf,usearch,hnswlib")
    ap.add_argument("--data", type=Path, default=DATA, help="the shared data folder (text vectors)")
    ap.add_argument("--json", help="also write the rows here")
    a = ap.parse_args()
    global M
    M = a.m
    faiss.omp_set_num_threads(1)
    print(f"# {platform.machine()}, {os.cpu_count()} cores; faiss {faiss.__version__}, hnswlib "
          f"{getattr(hnswlib, '__version__', '0.8')}, usearch (ef {a.ef}, M {M}, ef_construction {EF_BUILD}, "
          f"one thread), dim {a.dim}, {a.queries} queries, recall@{a.k}")
    rows = []
    for kind in a.kinds.split(","):
        for n in map(int, a.sizes.split(",")):
            if kind == "random":
                x, q = random_vectors(n, a.dim, 0), random_vectors(a.queries, a.dim, 1)
            else:
                x, q = text_vectors(n, a.queries, a.dim, 0, a.data)
            exact, ms = exact_search(x, q, a.k)
            print(f"\n## {kind}, {n:,} vectors × {a.dim}  (exact numpy: p50 {np.percentile(ms, 50):.3f} ms, "
                  f"p95 {np.percentile(ms, 95):.3f} ms, {x.nbytes / 2**20:.1f} MB of vectors)")
            print("| library | build s | query p50 ms | p95 ms | recall@10 | file MB | RSS growth MB |")
            print("| --- | --- | --- | --- | --- | --- | --- |")
            libs = {"faiss-hnsw": lambda: Faiss("HNSW", a.ef), "faiss-ivf": lambda: Faiss("IVF", a.ef),
                    "usearch": lambda: Usearch(a.ef), "hnswlib": lambda: Hnswlib(a.ef)}
            for name in a.libs.split(","):
                r = measure(libs[name](), x, q, exact, a.k)
                r.update(kind=kind, n=n, dim=a.dim, exact_p50_ms=round(float(np.percentile(ms, 50)), 3))
                rows.append(r)
                print(f"| {r['library']} | {r['build_s']} | {r['p50_ms']} | {r['p95_ms']} | "
                      f"{r['recall@10']} | {r['file_mb']} | {r['rss_mb']} |", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
