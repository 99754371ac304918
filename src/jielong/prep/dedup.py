"""De-duplication: exact (a hash of normalised text) and near-duplicate (MinHash + LSH).

    dd = Deduplicator(MinHashConfig(bands=14, rows=8))
    for text, lang in docs:
        dd.add(text, lang)
    result = dd.finish()   # result.status[i]: "keep" | "exact_duplicate" | "near_duplicate"

Exact: NFKC, lowercase, whitespace collapsed, then a 64-bit xxh3 hash; the first document
with a given hash is kept.

Near: each document becomes a set of shingles, character n-grams for Chinese (Chinese
has no spaces, and a word segmenter would make the shingles depend on its dictionary) and
word n-grams for English and other space-separated text. Shingles are hashed to 64 bits
and min-hashed under `permutations` functions from the multiply-add-shift universal
family, h(x) = ((a·x + b) mod 2^64) >> 32 with a odd, which needs no big-integer
arithmetic. The signature is cut into `bands` bands of `rows` rows; two documents whose
band matches land in one LSH bucket, and buckets are joined into clusters (connected
components). The probability that a pair with Jaccard similarity s becomes a candidate is
1 - (1 - s^rows)^bands: with 14 × 8 that is 0.5 at s ≈ 0.69 and 0.92 at s = 0.8.

Every cluster keeps its first document (input order) and drops the rest; the survivor
carries the cluster size, counting exact duplicates too, so it can be re-weighted later.
Memory is 4 · permutations bytes per document for the signature (448 B at the default),
plus ~100 B for its exact hash and indices: about 6 GB for ten million documents (twice the
signatures for a moment while clustering).
"""

from __future__ import annotations

import re
import time
import unicodedata
from array import array
from dataclasses import dataclass, field

import numpy as np
import xxhash

from jielong.errors import UserError
from jielong.prep.hashing import POLY, mix64, ngram_hashes

_SPACE = re.compile(r"\s+")
_NOT_WORD = re.compile(r"[\W_]+")
_WORD = re.compile(r"\w+")


@dataclass
class MinHashConfig:
    """Near-duplicate settings.

    Args:
        zh_shingle: characters per shingle for Chinese text
        en_shingle: words per shingle for English (and other space-separated) text
        permutations: min-hash functions per document; at least bands × rows (extra ones are
            not used by LSH)
        bands: LSH bands; more bands find less similar pairs
        rows: min-hashes per band; more rows demand more similar pairs
        seed: seed of the hash functions (the same seed gives the same signatures)
    """

    zh_shingle: int = 5
    en_shingle: int = 5
    permutations: int = 112
    bands: int = 14
    rows: int = 8
    seed: int = 0

    def __post_init__(self):
        for name in ("zh_shingle", "en_shingle", "permutations", "bands", "rows"):
            if getattr(self, name) < 1:
                raise UserError(f"minhash {name}={getattr(self, name)} must be at least 1")
        if self.bands * self.rows > self.permutations:
            raise UserError(f"minhash bands × rows = {self.bands} × {self.rows} is more than "
                            f"permutations={self.permutations}; raise --permutations to at least "
                            f"{self.bands * self.rows}")

    @property
    def threshold(self) -> float:
        """The usual estimate of the similarity where LSH starts to catch pairs,
        (1/bands)^(1/rows)."""
        return (1 / self.bands) ** (1 / self.rows)


def normalize(text: str) -> str:
    """The text that exact de-duplication compares: NFKC, lowercase, spaces collapsed."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def exact_key(text: str) -> int:
    return xxhash.xxh3_64_intdigest(normalize(text).encode())


_HAN = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]")
_LETTER = re.compile(r"[^\W_]")


def guess_lang(text: str, sample: int = 1000) -> str:
    """"zh" when at least a third of the letters and digits (of the first `sample`
    characters) are Han characters, else "en". The pipeline passes LanguageScript's
    metadata["lang"] instead; this is for texts that come without one."""
    head = text[:sample]
    letters = len(_LETTER.findall(head))
    return "zh" if letters and len(_HAN.findall(head)) * 3 >= letters else "en"


def shingles(text: str, lang: str | None, cfg: MinHashConfig) -> np.ndarray:
    """The document's distinct shingle hashes (uint64): char n-grams of its letters and
    digits for "zh", lowercase word n-grams otherwise. Empty for a text with neither."""
    text = unicodedata.normalize("NFKC", text).lower()
    if (lang or guess_lang(text)) == "zh":
        chars = _NOT_WORD.sub("", text)
        units = np.frombuffer(chars.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        n = cfg.zh_shingle
    else:
        words = _WORD.findall(text)
        units = np.fromiter((xxhash.xxh3_64_intdigest(w.encode()) for w in words), np.uint64, len(words))
        n = cfg.en_shingle
    if not len(units):
        return units
    return np.unique(ngram_hashes(units, n))


class MinHasher:
    """Signatures: for each of `permutations` hash functions, the least shingle hash."""

    CHUNK = 2048  # shingles per matrix block: bounds memory on a very long document

    def __init__(self, cfg: MinHashConfig):
        self.cfg = cfg
        rng = np.random.default_rng(cfg.seed)
        self.a = rng.integers(0, 2**64, cfg.permutations, dtype=np.uint64, endpoint=False) | np.uint64(1)
        self.b = rng.integers(0, 2**64, cfg.permutations, dtype=np.uint64, endpoint=False)

    def signature(self, shingle_hashes: np.ndarray) -> np.ndarray:
        sig = np.full(self.cfg.permutations, np.iinfo(np.uint32).max, dtype=np.uint32)
        for i in range(0, len(shingle_hashes), self.CHUNK):
            x = shingle_hashes[i:i + self.CHUNK, None]
            h = ((x * self.a + self.b) >> np.uint64(32)).astype(np.uint32)
            np.minimum(sig, h.min(axis=0), out=sig)
        return sig

    def __call__(self, text: str, lang: str | None = None) -> np.ndarray:
        return self.signature(shingles(text, lang, self.cfg))


def lsh_components(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """For each document (a row of `sigs`), the smallest index in its cluster.

    Documents sharing any band's bucket are linked; clusters are the connected components,
    found by min-label propagation with pointer jumping (a handful of numpy passes)."""
    n = len(sigs)
    labels = np.arange(n, dtype=np.int64)
    if n < 2:
        return labels
    us, vs = [], []
    for band in range(bands):
        key = np.zeros(n, dtype=np.uint64)
        for col in sigs[:, band * rows:(band + 1) * rows].T:
            key = key * POLY + col.astype(np.uint64)
        key = mix64(key)
        order = np.argsort(key, kind="stable")
        same = key[order[1:]] == key[order[:-1]]
        us.append(order[:-1][same])
        vs.append(order[1:][same])
    u, v = np.concatenate(us), np.concatenate(vs)
    while len(u):
        low = np.minimum(labels[u], labels[v])
        before = labels.copy()
        np.minimum.at(labels, u, low)
        np.minimum.at(labels, v, low)
        while True:  # pointer jumping: follow labels to their own label
            jumped = labels[labels]
            if np.array_equal(jumped, labels):
                break
            labels = jumped
        if np.array_equal(labels, before):
            break
    return labels


@dataclass
class DedupResult:
    """Per document, in the order added: its fate and, for a survivor, its cluster size."""

    status: list[str]                # "keep" | "exact_duplicate" | "near_duplicate"
    duplicate_of: np.ndarray         # the kept document's index (itself when kept)
    cluster_size: np.ndarray         # documents the survivor stands for (0 for a dropped one)
    counts: dict = field(default_factory=dict)


class Deduplicator:
    """Collects documents one at a time (keeping only hashes and signatures), then decides."""

    def __init__(self, cfg: MinHashConfig | None = None, exact: bool = True, near: bool = True):
        self.cfg = cfg or MinHashConfig()
        self.exact, self.near = exact, near
        self.hasher = MinHasher(self.cfg)
        self.first: dict[int, int] = {}        # exact hash -> first index
        self.exact_of = array("q")             # index of the exact original (itself if first)
        self.sig_rows = array("q")             # documents with a signature, in order
        self.blocks: list[np.ndarray] = []     # their signatures, BLOCK rows at a time
        self.seconds = {"exact": 0.0, "near": 0.0}

    BLOCK = 8192

    def _keep_signature(self, i: int, sig: np.ndarray) -> None:
        filled = len(self.sig_rows) % self.BLOCK
        if filled == 0:
            self.blocks.append(np.empty((self.BLOCK, self.cfg.permutations), dtype=np.uint32))
        self.blocks[-1][filled] = sig
        self.sig_rows.append(i)

    def add(self, text: str, lang: str | None = None) -> None:
        i = len(self.exact_of)
        t0 = time.perf_counter()
        if self.exact:
            i0 = self.first.setdefault(exact_key(text), i)
            self.exact_of.append(i0)
            if i0 != i:
                self.seconds["exact"] += time.perf_counter() - t0
                return
        else:
            self.exact_of.append(i)
        t1 = time.perf_counter()
        self.seconds["exact"] += t1 - t0
        if self.near:
            sh = shingles(text, lang, self.cfg)
            if len(sh):  # a text without letters has nothing to compare
                self._keep_signature(i, self.hasher.signature(sh))
            self.seconds["near"] += time.perf_counter() - t1

    def __len__(self) -> int:
        return len(self.exact_of)

    def finish(self) -> DedupResult:
        n = len(self.exact_of)
        exact_of = np.frombuffer(self.exact_of, dtype=np.int64).copy() if n else np.zeros(0, np.int64)
        root = exact_of.copy()
        if self.sig_rows:
            t0 = time.perf_counter()
            rows = np.frombuffer(self.sig_rows, dtype=np.int64)
            sigs = np.concatenate(self.blocks)[:len(rows)]
            comp = lsh_components(sigs, self.cfg.bands, self.cfg.rows)
            self.seconds["near"] += time.perf_counter() - t0
            root[rows] = rows[comp]          # a near-duplicate points at its cluster's first
            root = root[exact_of]            # an exact duplicate follows its original
        size = np.bincount(root, minlength=n) if n else np.zeros(0, dtype=np.int64)
        idx = np.arange(n)
        status = ["keep" if r == i else ("exact_duplicate" if e != i else "near_duplicate")
                  for i, r, e in zip(idx.tolist(), root.tolist(), exact_of.tolist(), strict=True)]
        counts = {s: status.count(s) for s in ("keep", "exact_duplicate", "near_duplicate")}
        counts["clusters"] = int(((size > 1) & (root == idx)).sum())
        return DedupResult(status, root, np.where(root == idx, size, 0), counts)


def dedup_texts(texts: list[str], cfg: MinHashConfig | None = None, langs: list[str] | None = None,
                exact: bool = True, near: bool = True) -> DedupResult:
    """De-duplicate a list of texts in one call (tests, notebooks, the benchmark)."""
    dd = Deduplicator(cfg, exact=exact, near=near)
    for i, t in enumerate(texts):
        dd.add(t, langs[i] if langs else None)
    return dd.finish()
