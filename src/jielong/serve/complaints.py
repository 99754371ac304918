"""Does a follow-up complain about the reply before it? A small classifier for the web chat's
implicit feedback (jielong.serve.implicit), in Traditional and Simplified Chinese and English.

    from jielong.serve.complaints import complaint_probability
    complaint_probability("你搞错了吧")            # high: a complaint
    complaint_probability("不對稱加密是什麼？")    # low: a question that happens to say 不對
    complaint_probability("what's wrong with my code?")  # low

The data is a few hundred follow-ups written by hand for this purpose and shipped with the
package (complaint_texts/train.tsv: 1 = says the reply was wrong, off the question, made up,
or scolds it; 0 = thanks, praise, a new question, a request to go on or change the form),
with hard negatives that share the words of a complaint (不對稱, 不錯, 沒錯, 垃圾分類, "what's
wrong with my code?", "stupid question, but …"). complaint_texts/heldout.tsv, other wording
never trained on, is where precision and recall are measured (`heldout_scores`, checked by
tests/serve/test_complaints.py).

Features: the text NFKC-folded and lower-cased, its character 1–3-grams with a start and an
end mark (so "不對" at the start of a message differs from "不對稱" inside one; no segmenter
is needed for Chinese), plus word 1–2-grams of its Latin words ("not right" vs "that's
right"); binary, each text's vector L2-normalised — the quality classifier's recipe
(jielong.prep.quality_model) at the size of a few hundred sentences. Model: logistic
regression with an L2 penalty, both classes weighted to count equally, fit by full-batch
gradient descent with Nesterov momentum in numpy. It is trained from train.tsv at first use
(about 0.2 s on one core, deterministic), so the labelled file is the model: edit it and the
classifier follows, with no weights to keep in step.

Measured (bench/bench_complaints.py, bench/RESULTS.md): held-out precision 0.87, recall 0.83
over the three scripts; 4 of DRCD's and CMRC's 6,743 real questions flagged. It reads
wording, not intent: praise that shares a complaint's words (完全正確, 沒問題) can pass for
one, and a scolding it has no n-grams for ("how can you be this dumb?") can slip by.

A follow-up counts as a complaint at probability ≥ THRESHOLD (0.5).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TEXTS = Path(__file__).with_name("complaint_texts")
SCRIPTS = ("hant", "hans", "en")
THRESHOLD = 0.5
L2 = 3e-4      # penalty on the weights (not the bias): the best log-loss of 5-fold CV on train.tsv
               # among 1e-2..3e-4 that 300 steps still fit to 1e-4 of the optimum
STEPS = 300    # gradient steps; the loss has settled well before (see the test)
_WORD = re.compile(r"[a-z0-9']+")


def features(text: str) -> list[str]:
    """The distinct features of a text: character 1–3-grams (^ start, $ end) and "w:" word
    1–2-grams of its Latin words."""
    t = " ".join(unicodedata.normalize("NFKC", text).lower().split())
    marked = f"^{t}$"
    out = {marked[i:i + n] for n in (1, 2, 3) for i in range(len(marked) - n + 1)}
    words = _WORD.findall(t)
    out.update(f"w:{w}" for w in words)
    out.update(f"w:{a} {b}" for a, b in zip(words, words[1:], strict=False))
    return sorted(out)


@dataclass
class ComplaintModel:
    """Logistic regression on binary n-gram features: vocab (feature → column), weights, bias."""

    vocab: dict[str, int]
    weights: np.ndarray
    bias: float

    def matrix(self, texts: list[str]) -> np.ndarray:
        x = np.zeros((len(texts), len(self.vocab)), np.float32)
        for i, text in enumerate(texts):
            cols = [self.vocab[f] for f in features(text) if f in self.vocab]
            if cols:
                x[i, cols] = 1.0 / np.sqrt(len(cols))
        return x

    def probabilities(self, texts: list[str]) -> np.ndarray:
        """P(complaint) of each text (row by row: no matrix for many texts)."""
        z = np.full(len(texts), self.bias)
        for i, text in enumerate(texts):
            cols = [self.vocab[f] for f in features(text) if f in self.vocab]
            if cols:
                z[i] += float(self.weights[cols].sum()) / np.sqrt(len(cols))
        return 1.0 / (1.0 + np.exp(-z))

    @classmethod
    def fit(cls, texts: list[str], labels: list[int], l2: float = L2,
            steps: int = STEPS) -> ComplaintModel:
        vocab: dict[str, int] = {}
        for text in texts:
            for f in features(text):
                vocab.setdefault(f, len(vocab))
        model = cls(vocab, np.zeros(len(vocab), np.float32), 0.0)
        x, y = model.matrix(texts), np.asarray(labels, np.float32)
        n_pos = max(1.0, float(y.sum()))
        n_neg = max(1.0, len(y) - float(y.sum()))
        c = np.where(y == 1, len(y) / (2 * n_pos), len(y) / (2 * n_neg)).astype(np.float32)
        c /= c.sum()  # per-example weights of the mean loss: the classes count equally
        # Rows have unit norm (2 with the bias's 1) and c sums to 1, so the loss's curvature
        # is at most 2/4 + l2: a step of 1/that never overshoots. A gradient step keeps the
        # weights in the span of the rows, w = xᵀa, so the steps are taken on a (one number
        # per example) with the n × n Gram matrix: the same iterates, a tenth of the work.
        lr = 1.0 / (0.5 + l2)
        gram = x @ x.T
        theta = np.zeros(len(texts) + 1, np.float32)  # a, then the bias
        prev = theta.copy()
        for k in range(steps):
            look = theta + (k / (k + 3)) * (theta - prev)  # Nesterov's look-ahead
            p = 1.0 / (1.0 + np.exp(-(gram @ look[:-1] + look[-1])))
            r = c * (p - y)
            prev, theta = theta, look - lr * np.append(r + l2 * look[:-1], r.sum())
        model.weights, model.bias = x.T @ theta[:-1], float(theta[-1])
        return model


def labelled(split: str = "train") -> list[tuple[int, str, str]]:
    """(label, script, text) of complaint_texts/{split}.tsv (train or heldout)."""
    out = []
    path = TEXTS / f"{split}.tsv"
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        label, script, text = line.split("\t")
        if label not in ("0", "1") or script not in SCRIPTS:
            raise ValueError(f"{path}:{n}: want label 0/1, script {'/'.join(SCRIPTS)}, text")
        out.append((int(label), script, text))
    return out


@functools.cache
def model() -> ComplaintModel:
    """The classifier, trained on complaint_texts/train.tsv once per process."""
    rows = labelled("train")
    return ComplaintModel.fit([t for _, _, t in rows], [y for y, _, _ in rows])


def complaint_probabilities(texts: list[str]) -> list[float]:
    """P(complaint) of each follow-up."""
    return [float(p) for p in model().probabilities(list(texts))]


def complaint_probability(text: str) -> float:
    return complaint_probabilities([text])[0]


def heldout_scores(threshold: float = THRESHOLD) -> dict[str, dict]:
    """Precision, recall and counts on complaint_texts/heldout.tsv, per script and for all."""
    rows = labelled("heldout")
    probs = complaint_probabilities([t for _, _, t in rows])
    out = {}
    for script in (*SCRIPTS, "all"):
        pick = [(y, p >= threshold) for (y, s, _), p in zip(rows, probs, strict=True)
                if script in ("all", s)]
        tp = sum(y and hit for y, hit in pick)
        fp = sum(hit and not y for y, hit in pick)
        fn = sum(y and not hit for y, hit in pick)
        out[script] = {"n": len(pick), "tp": tp, "fp": fp, "fn": fn,
                       "precision": tp / (tp + fp) if tp + fp else 0.0,
                       "recall": tp / (tp + fn) if tp + fn else 0.0}
    return out
