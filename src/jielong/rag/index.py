"""The index of a document collection: chunks, BM25, and (with an embedder) their vectors.

    from jielong.rag.index import build_index, Index
    report = build_index(["docs/"], "runs/index")                 # BM25 only
    report = build_index(["docs/"], "runs/index", embedder=emb)   # and dense vectors
    hits = Index.load("runs/index", embedder=emb).search("退貨政策", k=5, method="hybrid")

Folder layout (no pickle anywhere):
    manifest.json       {"version": 1, "embedder": name | null, "dim", "chunking": {...},
                         "tokenizer": {...}, "files": {path: {"hash", "chunks": [ids]}}}
    chunks.jsonl        one Chunk a line
    bm25/               bm25s's arrays and vocabulary (allow_pickle=False)
    vectors.safetensors {"vectors": [n, dim] float32}, rows in chunks.jsonl's order

Incremental: the index holds the files found under the PATHs of its latest build. Building
again hashes every file (SHA-256 of its bytes); an unchanged file keeps its chunks and their
vectors, a changed or new one is read and chunked again and only its chunks are embedded, a
file no longer found is removed. Changing the chunk size, the overlap or the JSONL field
re-chunks everything, a different embedder re-embeds everything. BM25 is rebuilt from all
chunks each time, from their words kept beside it (bm25/tokens.safetensors: token ids into
bm25s's vocabulary), so only new chunks go through jieba. The new folder is written beside the old and
swapped in whole, so a killed build leaves the old index.

Search: BM25 over `sparse.tokenize` tokens; dense as exact cosine (a matrix product of
L2-normalised vectors), or over EXACT_LIMIT vectors through a faiss HNSW graph kept beside them
(vectors.faiss, rebuilt with the vectors; jielong.rag.ann, chosen by bench/bench_ann.py); hybrid as reciprocal rank fusion of the two lists, score Σ 1/(60 +
rank) (Cormack, Clarke & Büttcher 2009, k = 60), over the top max(50, 4k) of each; with a
`dense_weight` w the dense list's terms are w / (60 + rank) (weighted RRF, as Elasticsearch's
and Vespa's rank fusion weight their lists; w = 1 is plain RRF, w = 0 is BM25's order): a weak
encoder's list can then add its evidence without outvoting BM25's (bench/RESULTS.md).

Reranking (optional, `reranker=`: anything with `score(query, passages) -> [float]`, e.g.
jielong.rag.rerank.Reranker): the method's top `rerank_n` chunks are read again by the
cross-encoder, with the query, and reordered by its scores (ties keep the first stage's
order); when k > rerank_n, the rest follow in the first stage's order. A reranked hit's
method is "METHOD+rerank" and its score the reranker's (Nogueira & Cho 2019).

An embedder is any object with `name` (model + pooling; stored in the manifest so a query
embedded by another model is refused), `dim` and `embed(texts) -> float32 [n, dim]`,
L2-normalised.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file
from tqdm import tqdm

from jielong.errors import UserError
from jielong.files import atomic_dir, write_json
from jielong.rag.ann import EXACT_LIMIT, AnnIndex
from jielong.rag.chunk import OVERLAP, SIZE, Chunk, chunk_document
from jielong.rag.embed import embed_queries
from jielong.rag.ingest import Skipped, find_files, read_file
from jielong.rag.sparse import KINDS, Sparse, tokenize

VERSION = 1
METHODS = ("bm25", "dense", "hybrid")
RRF_K = 60
RERANK_N = 20


@dataclass
class Hit:
    chunk: Chunk
    score: float
    rank: int
    method: str


@dataclass
class BuildReport:
    indexed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    chunks: int = 0
    embedded: int = 0


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def build_index(paths: list[str | Path], out: str | Path, embedder=None,
                chunk_tokens: int = SIZE, overlap: int = OVERLAP, field: str = "text",
                tokenizer: str = "jieba", counter=None, progress: bool | None = None,
                ann_limit: int = EXACT_LIMIT) -> BuildReport:
    """Index the files under `paths` into the folder `out`, reusing what an earlier build
    there already did (see the module docstring). Returns what happened to each file. Over
    `ann_limit` vectors, dense search also gets an HNSW graph (jielong.rag.ann)."""
    if tokenizer not in KINDS:
        raise UserError(f"--tokenizer {tokenizer!r}: choose one of {', '.join(KINDS)}")
    if chunk_tokens < 1 or not 0 <= overlap < chunk_tokens:
        raise UserError(f"--chunk_tokens {chunk_tokens} --overlap {overlap}: need 0 ≤ overlap < chunk_tokens")
    for p in map(Path, paths):
        if not p.exists():
            raise UserError(f"{p}: no such file or folder")
    out = Path(out)
    progress = sys.stderr.isatty() if progress is None else progress
    chunking = {"chunk_tokens": chunk_tokens, "overlap": overlap, "field": field,
                "counter": getattr(counter, "name", "simple")}
    tok_config = {"kind": tokenizer, "search_mode": True}
    old = read_old(out, embedder, tok_config)
    report = BuildReport()
    chunks: list[Chunk] = []
    vectors: list[np.ndarray | None] = []  # per chunk: kept from the old index, or None = to embed
    tokens: list[list[str] | None] = []    # the same for BM25 tokens: None = to tokenize
    files: dict[str, dict] = {}
    for path in tqdm(find_files(paths), desc="reading", unit=" files", disable=not progress):
        key = str(path)
        try:
            digest = file_hash(path)
        except OSError as e:
            report.skipped.append((key, f"cannot be read ({e.strerror or e})"))
            continue
        kept = old["files"].get(key)
        if kept is not None and kept["hash"] == digest and old["chunking"] == chunking:
            rows = [old["row"][i] for i in kept["chunks"]]
            chunks += [old["chunks"][r] for r in rows]
            vectors += [old["vectors"][r] if old["vectors"] is not None else None for r in rows]
            tokens += [old["tokens"](r) for r in rows]
            files[key] = kept
            report.unchanged.append(key)
            continue
        try:
            docs = read_file(path, field)
        except Skipped as e:
            report.skipped.append((key, str(e)))
            continue
        new = [c for d in docs for c in chunk_document(d, chunk_tokens, overlap, counter)]
        chunks += new
        vectors += [None] * len(new)
        tokens += [None] * len(new)
        files[key] = {"hash": digest, "chunks": [c.id for c in new]}
        report.indexed.append(key)
    report.removed = sorted(set(old["files"]) - set(files))
    if not chunks:
        why = "; ".join(f"{p}: {r}" for p, r in report.skipped[:3]) or "no files found"
        raise UserError(f"nothing to index under {' '.join(map(str, paths))} ({why})")
    matrix = embed_missing(embedder, chunks, vectors, report, progress)
    report.chunks = len(chunks)
    for i in tqdm([i for i, t in enumerate(tokens) if t is None], desc="BM25 words", unit=" chunks",
                  disable=not progress):
        tokens[i] = tokenize(chunks[i].indexed_text(), tokenizer)
    sparse = Sparse.build(tokens)
    manifest = {"version": VERSION, "embedder": getattr(embedder, "name", None),
                "dim": None if matrix is None else int(matrix.shape[1]), "chunking": chunking,
                "tokenizer": tok_config, "files": files}
    with atomic_dir(out) as tmp:
        with open(tmp / "chunks.jsonl", "w", encoding="utf-8") as f:
            for c in chunks:
                f.write(json.dumps(c.to_dict(), ensure_ascii=False) + "\n")
        sparse.save(tmp / "bm25")
        sparse.save_tokens(tmp / "bm25" / "tokens.safetensors", tokens)
        if matrix is not None:
            save_file({"vectors": matrix}, str(tmp / "vectors.safetensors"))
            if len(matrix) > ann_limit:  # a large collection: an HNSW graph beside the vectors
                AnnIndex.build(matrix).save(tmp / "vectors.faiss")
        write_json(tmp / "manifest.json", manifest)
    return report


def read_old(out: Path, embedder, tok_config: dict) -> dict:
    """What an earlier build in `out` left: files, chunks by id, vectors when they were made
    by the same embedder, BM25 tokens (a function of the row) when by the same tokenizer."""
    empty = {"files": {}, "chunks": [], "row": {}, "vectors": None, "chunking": None,
             "tokens": lambda row: None}
    if not (out / "manifest.json").is_file():
        if out.exists() and any(out.iterdir()):
            raise UserError(f"{out}: a folder that is not a jielong index; choose an empty or new --out")
        return empty
    manifest = read_manifest(out)
    chunks = read_chunks(out)
    vectors = None
    if embedder is not None and manifest.get("embedder") == embedder.name \
            and (out / "vectors.safetensors").is_file():
        vectors = load_file(str(out / "vectors.safetensors"))["vectors"]
    tokens = empty["tokens"]
    if manifest.get("tokenizer") == tok_config and (out / "bm25" / "tokens.safetensors").is_file():
        tokens = Sparse.load(out / "bm25").read_tokens(out / "bm25" / "tokens.safetensors")
    return {"files": manifest["files"], "chunks": chunks, "row": {c.id: i for i, c in enumerate(chunks)},
            "vectors": vectors, "chunking": manifest.get("chunking"), "tokens": tokens}


def embed_missing(embedder, chunks: list[Chunk], vectors: list, report: BuildReport,
                  progress: bool, batch: int = 64) -> np.ndarray | None:
    """The [n, dim] matrix: kept rows as they were, the others embedded now."""
    if embedder is None:
        return None
    todo = [i for i, v in enumerate(vectors) if v is None]
    for s in tqdm(range(0, len(todo), batch), desc="embedding", unit=" batches", disable=not progress):
        rows = todo[s:s + batch]
        got = np.asarray(embedder.embed([chunks[i].indexed_text() for i in rows]), dtype=np.float32)
        if got.shape != (len(rows), embedder.dim):
            raise ValueError(f"embedder {embedder.name} gave shape {got.shape}, not ({len(rows)}, {embedder.dim})")
        for i, v in zip(rows, got, strict=True):
            vectors[i] = v
    report.embedded = len(todo)
    return np.stack(vectors).astype(np.float32) if vectors else np.zeros((0, embedder.dim), np.float32)


def read_manifest(d: Path) -> dict:
    path = d / "manifest.json"
    if not path.is_file():
        raise UserError(f"{d}: no index here (no manifest.json); build one with "
                        f"`jielong rag index DOCS --out {d}`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a readable index manifest ({e}); build the index again") from None
    if manifest.get("version") != VERSION:
        raise UserError(f"{path}: index version {manifest.get('version')}, this jielong reads "
                        f"{VERSION}; build the index again")
    return manifest


def read_chunks(d: Path) -> list[Chunk]:
    with open(d / "chunks.jsonl", encoding="utf-8") as f:
        return [Chunk.from_dict(json.loads(line)) for line in f if line.strip()]


class Index:
    """A built index, loaded for search."""

    def __init__(self, path: Path, manifest: dict, chunks: list[Chunk], sparse: Sparse,
                 vectors: np.ndarray | None, embedder=None, ann: AnnIndex | None = None,
                 reranker=None, rerank_n: int = RERANK_N, dense_weight: float = 1.0):
        if rerank_n < 1:
            raise UserError(f"--rerank_n {rerank_n}: rerank at least 1 passage (20 is usual)")
        if not dense_weight >= 0:
            raise UserError(f"--dense_weight {dense_weight}: need a weight ≥ 0 (1 is plain RRF)")
        self.path, self.manifest, self.chunks = path, manifest, chunks
        self.sparse, self.vectors, self.embedder, self.ann = sparse, vectors, embedder, ann
        self.reranker, self.rerank_n, self.dense_weight = reranker, rerank_n, dense_weight
        self.row_of = {c.id: i for i, c in enumerate(chunks)}

    @classmethod
    def load(cls, path: str | Path, embedder=None, reranker=None, rerank_n: int = RERANK_N,
             dense_weight: float = 1.0) -> Index:
        """The index in `path`, searched with `embedder` (dense, hybrid), `reranker` (its top
        `rerank_n` rescored) and hybrid's `dense_weight` (see the module docstring)."""
        d = Path(path)
        manifest = read_manifest(d)
        vectors = None
        if (d / "vectors.safetensors").is_file():
            vectors = load_file(str(d / "vectors.safetensors"))["vectors"]
        ann = AnnIndex.load(d / "vectors.faiss") if (d / "vectors.faiss").is_file() else None
        return cls(d, manifest, read_chunks(d), Sparse.load(d / "bm25"), vectors, embedder, ann,
                   reranker, rerank_n, dense_weight)

    def search(self, query: str, k: int = 5, method: str = "bm25") -> list[Hit]:
        """The k best chunks for `query`, best first (BM25: only chunks sharing a token),
        the first stage's top `rerank_n` reordered by the reranker when there is one."""
        if method not in METHODS:
            raise UserError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
        if self.reranker is None:
            return self.first_stage(query, k, method)
        hits = self.first_stage(query, max(k, self.rerank_n), method)
        head, tail = hits[:self.rerank_n], hits[self.rerank_n:]
        scores = self.reranker.score(query, [h.chunk.indexed_text() for h in head]) if head else []
        order = sorted(range(len(head)), key=lambda i: -scores[i])  # stable: ties keep the order
        ranked = [Hit(head[i].chunk, float(scores[i]), 0, f"{method}+rerank") for i in order] + tail
        return [replace(h, rank=r) for r, h in enumerate(ranked[:k], 1)]

    def first_stage(self, query: str, k: int, method: str) -> list[Hit]:
        if method == "bm25":
            return self.top(self.bm25_scores(query), k, "bm25")
        if method == "dense":
            return self.dense_top(query, k)
        n = max(50, 4 * k)
        fused: dict[int, float] = {}
        for hits, w in ((self.top(self.bm25_scores(query), n, "bm25"), 1.0),
                        (self.dense_top(query, n) if self.dense_weight else [], self.dense_weight)):
            for h in hits:
                row = self.row_of[h.chunk.id]
                fused[row] = fused.get(row, 0.0) + w / (RRF_K + h.rank)
        best = sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
        return [Hit(self.chunks[r], s, i + 1, "hybrid") for i, (r, s) in enumerate(best)]

    def bm25_scores(self, query: str) -> np.ndarray:
        tok = self.manifest.get("tokenizer", {})
        return self.sparse.scores(tokenize(query, tok.get("kind", "jieba"), tok.get("search_mode", True)))

    def dense_top(self, query: str, k: int) -> list[Hit]:
        """The k nearest chunks: exact, or through the HNSW graph of a large index."""
        if self.ann is None:
            return self.top(self.dense_scores(query), k, "dense")
        scores, ids = self.ann.search(self.query_vector(query)[None], min(k, len(self.chunks)))
        return [Hit(self.chunks[i], float(sc), r + 1, "dense")
                for r, (sc, i) in enumerate(zip(scores[0], ids[0], strict=True)) if i >= 0]

    def dense_scores(self, query: str) -> np.ndarray:
        return self.vectors @ self.query_vector(query)

    def query_vector(self, query: str) -> np.ndarray:
        name = self.manifest.get("embedder")
        if self.vectors is None or name is None:
            raise UserError(f"{self.path}: this index has no vectors (built without an embedder); "
                            "search it with --method bm25, or build it again with --embedder")
        if self.embedder is None:
            raise UserError(f"{self.path}: dense search needs the index's embedder {name!r}; pass --embedder")
        if self.embedder.name != name:
            raise UserError(f"{self.path}: the index was embedded with {name!r}, the query with "
                            f"{self.embedder.name!r}; use the same embedder or build the index again with it")
        return np.asarray(embed_queries(self.embedder, [query]), dtype=np.float32)[0]

    def top(self, scores: np.ndarray, k: int, method: str) -> list[Hit]:
        k = min(k, len(scores))
        if k <= 0:
            return []
        idx = np.argpartition(-scores, k - 1)[:k]
        idx = idx[np.lexsort((idx, -scores[idx]))]
        if method == "bm25":
            idx = idx[scores[idx] > 0]
        return [Hit(self.chunks[i], float(scores[i]), r + 1, method) for r, i in enumerate(idx)]
