"""Approximate nearest-neighbour search for large dense indexes: faiss's HNSW graph over
inner products (cosine on the unit vectors `jielong.rag.embed` makes), and exact search to
check it against.

Why faiss HNSW (bench/bench_ann.py, bench/RESULTS.md, 2026-12-06, one thread, the same
graph settings for all): on 100k text vectors (384 wide) it had the best recall@10 (0.816
vs hnswlib 0.802, usearch 0.802) and the lowest query latency (p50 0.38 ms vs 0.40 and
0.74); hnswlib built faster (70 s vs 111 s) but a build is once per index and a query is
every time. faiss also holds the other structures a bigger collection may want (IVF,
product quantisation) behind the same file format. The defaults here (M 32, ef_search 128)
buy more recall than the bench's common M 16 / ef 64 (RESULTS.md gives both). HNSW (Malkov & Yashunin 2016) needs no training pass, takes vectors added
one by one, and its recall is set at query time by ef_search.

Below ~50,000 vectors exact search (one matrix–vector product) is fast enough (0.7 ms at
10k, ~20 ms at 100k on the bench box) and always right, so `EXACT_LIMIT` says when an index
should build a graph at all; `recall_against_exact` measures what the graph gives up.

The file is faiss's own binary format (`faiss.write_index`), written atomically; no pickle.

    from jielong.rag.ann import AnnIndex, recall_against_exact
    ann = AnnIndex.build(vectors)               # (n, d) float32, unit rows
    scores, ids = ann.search(query_vectors, k=10)
    ann.save("INDEX/vectors.faiss"); ann = AnnIndex.load("INDEX/vectors.faiss")
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jielong.errors import UserError
from jielong.files import atomic_path

EXACT_LIMIT = 50_000  # vectors; below this exact search is quick enough (bench/RESULTS.md)
M, EF_CONSTRUCTION, EF_SEARCH = 32, 128, 128  # graph degree; candidates while building / searching


def _faiss():
    try:
        import faiss
    except ImportError:
        raise UserError("approximate search needs faiss: pip install 'jielong[rag]' (faiss-cpu)") from None
    return faiss


def as_matrix(x, dim: int | None = None, what: str = "vectors") -> np.ndarray:
    """A C-contiguous float32 (n, d) copy-if-needed of `x` (a single vector becomes one row)."""
    a = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or (dim is not None and a.shape[1] != dim):
        raise UserError(f"{what} have shape {a.shape}; expected (n, {dim or 'd'})")
    return a


def exact_search(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids), each (nq, min(k, n)), best first: inner products, computed whole."""
    v, q = as_matrix(vectors), as_matrix(queries, vectors.shape[1], "queries")
    k = min(k, len(v))
    s = q @ v.T
    top = np.argpartition(-s, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(s, top, 1), axis=1, kind="stable")
    ids = np.take_along_axis(top, order, 1)
    return np.take_along_axis(s, ids, 1), ids.astype(np.int64)


class AnnIndex:
    """An HNSW graph over (n, d) vectors; ids are their row numbers."""

    def __init__(self, index, ef_search: int = EF_SEARCH):
        self.index = index
        self.dim = index.d
        self.ef_search = ef_search

    def __len__(self) -> int:
        return self.index.ntotal

    @classmethod
    def build(cls, vectors, m: int = M, ef_construction: int = EF_CONSTRUCTION,
              ef_search: int = EF_SEARCH) -> AnnIndex:
        faiss = _faiss()
        v = as_matrix(vectors)
        if not len(v):
            raise UserError("no vectors to index; add documents first")
        index = faiss.IndexHNSWFlat(v.shape[1], m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.add(v)
        return cls(index, ef_search)

    def search(self, queries, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (nq, k), best first; where fewer than k were found, id -1 and
        score -inf fill the row's end."""
        q = as_matrix(queries, self.dim, "queries")
        self.index.hnsw.efSearch = max(self.ef_search, k)
        scores, ids = self.index.search(q, k)
        scores[ids < 0] = -np.inf
        return scores, ids

    def save(self, path: str | Path) -> Path:
        faiss = _faiss()
        with atomic_path(path) as tmp:
            faiss.write_index(self.index, str(tmp))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, ef_search: int = EF_SEARCH) -> AnnIndex:
        faiss = _faiss()
        p = Path(path)
        if not p.is_file():
            raise UserError(f"{p}: no such ANN index file; rebuild the index")
        try:
            index = faiss.read_index(str(p))
        except RuntimeError as e:
            raise UserError(f"{p}: not a faiss index ({str(e).splitlines()[0][:120]}); rebuild the index") from None
        if not hasattr(index, "hnsw"):
            raise UserError(f"{p}: a faiss {type(index).__name__}, not the HNSW index jielong writes; rebuild it")
        return cls(index, ef_search)


def recall_against_exact(vectors, queries, k: int = 10, index: AnnIndex | None = None, **build) -> float:
    """Mean share of each query's exact top k that the ANN index (built here unless given,
    with `build`'s settings) also returns in its top k."""
    v = as_matrix(vectors)
    ann = index or AnnIndex.build(v, **build)
    _, exact = exact_search(v, queries, k)
    _, found = ann.search(queries, k)
    return float(np.mean([len(set(e.tolist()) & set(f.tolist())) / len(e) for e, f in zip(exact, found, strict=True)]))
