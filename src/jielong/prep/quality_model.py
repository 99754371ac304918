"""Quality classifier: hashed n-grams → logistic regression, trained on reference text
against web-like text, used to score, filter and up-sample documents.

    jielong data quality-train --good classics.jsonl --bad web.jsonl --out quality.json
    jielong data clean web/ --out clean/ --quality_model quality.json --min_quality 0.2 \
        --upsample_top_fraction 0.1 --upsample_times 3

A document's features are its character 1-3-grams when it is Chinese (no word segmenter
to depend on) and its word 1-2-grams otherwise, hashed into `buckets` slots (the hashing
trick: no vocabulary to build or store) and weighted log(1 + count), L2-normalised. The
score is the model's probability that the text looks like the reference ("good") side,
in [0, 1]. Training is full-batch Adam on the logistic loss with an L2 penalty, classes
weighted to count equally, in numpy: a few seconds for tens of thousands of documents.

The model is one JSON file (settings, training report, and the weights as base64 float32).
"""

from __future__ import annotations

import base64
import json
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xxhash

from jielong.errors import UserError
from jielong.files import write_json
from jielong.prep.dedup import guess_lang
from jielong.prep.hashing import mix64, ngram_hashes

_WORD = re.compile(r"\w+|[^\w\s]")
_SPACE = re.compile(r"\s+")
FORMAT = "jielong-quality-v1"


@dataclass
class Features:
    """Sparse rows: row i's features are idx[ptr[i]:ptr[i+1]] with values val[…]."""

    idx: np.ndarray
    val: np.ndarray
    ptr: np.ndarray

    @property
    def rows(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.ptr) - 1), np.diff(self.ptr))


@dataclass
class QualityModel:
    buckets: int = 2**18
    zh_ngrams: int = 3          # character 1..n-grams for Chinese
    en_ngrams: int = 2          # word 1..n-grams otherwise
    weights: np.ndarray | None = None
    bias: float = 0.0
    report: dict = field(default_factory=dict)

    def doc_features(self, text: str, lang: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        text = _SPACE.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()
        if (lang or guess_lang(text)) == "zh":
            units = np.frombuffer(text.replace(" ", "").encode("utf-32-le"), dtype=np.uint32)
            units, orders, salt = units.astype(np.uint64), self.zh_ngrams, 0
        else:
            words = _WORD.findall(text)
            units = np.fromiter((xxhash.xxh3_64_intdigest(w.encode()) for w in words),
                                np.uint64, len(words))
            orders, salt = self.en_ngrams, 1000
        if not len(units):
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        grams = [mix64(ngram_hashes(units, n) + np.uint64(salt + n))
                 for n in range(1, min(orders, len(units)) + 1)]
        slots = (np.concatenate(grams) % np.uint64(self.buckets)).astype(np.int64)
        idx, counts = np.unique(slots, return_counts=True)
        val = np.log1p(counts).astype(np.float32)
        return idx, val / np.linalg.norm(val)

    def features(self, texts: Iterable[str], langs: Iterable[str | None] | None = None) -> Features:
        texts = list(texts)
        langs = list(langs) if langs is not None else [None] * len(texts)
        parts = [self.doc_features(t, g) for t, g in zip(texts, langs, strict=True)]
        ptr = np.zeros(len(parts) + 1, dtype=np.int64)
        ptr[1:] = np.cumsum([len(i) for i, _ in parts])
        idx = [i for i, _ in parts] or [np.zeros(0, np.int64)]
        val = [v for _, v in parts] or [np.zeros(0, np.float32)]
        return Features(np.concatenate(idx), np.concatenate(val), ptr)

    def _logits(self, X: Features) -> np.ndarray:
        contrib = self.weights[X.idx] * X.val
        return np.bincount(X.rows, weights=contrib, minlength=len(X.ptr) - 1) + self.bias

    def score_many(self, texts: Iterable[str], langs: Iterable[str | None] | None = None) -> np.ndarray:
        """P(reference quality) for each text."""
        return _sigmoid(self._logits(self.features(texts, langs)))

    def score(self, text: str, lang: str | None = None) -> float:
        idx, val = self.doc_features(text, lang)
        return float(_sigmoid(np.float64(self.weights[idx] @ val) + self.bias))

    def save(self, path: str | Path) -> Path:
        w = np.asarray(self.weights, dtype="<f4")
        write_json(path, {"format": FORMAT, "buckets": self.buckets, "zh_ngrams": self.zh_ngrams,
                          "en_ngrams": self.en_ngrams, "bias": self.bias, "report": self.report,
                          "weights": base64.b64encode(w.tobytes()).decode("ascii")})
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> QualityModel:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: no such quality model; train one with "
                            "`jielong data quality-train --good … --bad … --out FILE`")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            assert d.get("format") == FORMAT
            w = np.frombuffer(base64.b64decode(d["weights"]), dtype="<f4").astype(np.float32)
            assert len(w) == d["buckets"]
        except (ValueError, KeyError, AssertionError, UnicodeDecodeError):
            raise UserError(f"{path}: not a jielong quality model (expected {FORMAT} JSON "
                            "from `jielong data quality-train`)") from None
        return cls(d["buckets"], d["zh_ngrams"], d["en_ngrams"], w, float(d["bias"]), d.get("report", {}))


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve: the chance a random positive outscores a random negative."""
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    pos = labels == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if not n_pos or not n_neg:
        return float("nan")
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def train_quality(good: list[str], bad: list[str], buckets: int = 2**18, steps: int = 300,
                  lr: float = 0.1, l2: float = 1e-4, val_fraction: float = 0.1,
                  seed: int = 0) -> QualityModel:
    """Fit the classifier on `good` (label 1) vs `bad` (label 0) texts; a held-out
    `val_fraction` of each side measures accuracy and AUC (in `model.report`)."""
    if len(good) < 2 or len(bad) < 2:
        raise UserError(f"quality training needs at least 2 good and 2 bad documents "
                        f"(got {len(good)} good, {len(bad)} bad)")
    if buckets < 16:
        raise UserError(f"buckets={buckets} is too small; use 2**16 or more")
    model = QualityModel(buckets=buckets)
    texts = list(good) + list(bad)
    y = np.r_[np.ones(len(good)), np.zeros(len(bad))]
    rng = np.random.default_rng(seed)
    val = np.zeros(len(texts), dtype=bool)
    for side in (np.flatnonzero(y == 1), np.flatnonzero(y == 0)):
        k = int(len(side) * val_fraction) if len(side) * val_fraction >= 1 else 0
        val[rng.choice(side, k, replace=False)] = True
    tr = np.flatnonzero(~val)
    X = model.features(texts[i] for i in tr)
    ytr = y[tr]
    # each class weighs the same in total, whatever the counts
    cw = np.where(ytr == 1, 0.5 / max(ytr.sum(), 1), 0.5 / max((1 - ytr).sum(), 1))
    rows = X.rows
    w, b = np.zeros(buckets), 0.0
    m, v, mb, vb = np.zeros(buckets), np.zeros(buckets), 0.0, 0.0
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    for t in range(1, steps + 1):  # full-batch Adam on the weighted logistic loss
        z = np.bincount(rows, weights=w[X.idx] * X.val, minlength=len(tr)) + b
        err = (_sigmoid(z) - ytr) * cw
        g = np.bincount(X.idx, weights=err[rows] * X.val, minlength=buckets) + l2 * w
        gb = err.sum()
        m, v = beta1 * m + (1 - beta1) * g, beta2 * v + (1 - beta2) * g * g
        mb, vb = beta1 * mb + (1 - beta1) * gb, beta2 * vb + (1 - beta2) * gb * gb
        corr = np.sqrt(1 - beta2**t) / (1 - beta1**t)
        w -= lr * corr * m / (np.sqrt(v) + eps)
        b -= lr * corr * mb / (np.sqrt(vb) + eps)
    model.weights, model.bias = w.astype(np.float32), float(b)
    report = {"good": len(good), "bad": len(bad), "train": len(tr), "steps": steps}
    for name, part in (("train", tr), ("val", np.flatnonzero(val))):
        if len(part):
            s = model.score_many(texts[i] for i in part)
            report[f"{name}_accuracy"] = round(float(((s >= 0.5) == (y[part] == 1)).mean()), 4)
            report[f"{name}_auc"] = round(auc(s, y[part]), 4)
    model.report = report
    return model


def upsample_copies(scores: np.ndarray, top_fraction: float, times: int) -> np.ndarray:
    """How many times each document is written: `times` for the best-scoring
    round(top_fraction · n) documents (ties broken by input order), 1 for the others."""
    if not 0 <= top_fraction <= 1:
        raise UserError(f"upsample_top_fraction={top_fraction} must be between 0 and 1")
    if times < 1:
        raise UserError(f"upsample_times={times} must be at least 1")
    copies = np.ones(len(scores), dtype=np.int64)
    k = int(round(top_fraction * len(scores)))
    if k and times > 1:
        best = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:k]
        copies[best] = times
    return copies
