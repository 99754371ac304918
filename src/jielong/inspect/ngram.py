"""An n-gram language model: Markov's 1906 idea, the baseline a transformer has to beat.

Run as:
    jielong train ngram data/corpus.jsonl --out runs/ngram --n 3 --unit char

The text is cut into symbols — tokens of a tokenizer (`--unit token`, the same tokens a
jielong model reads) or characters (`--unit char`) — and every document is padded with n − 1
start symbols and closed with an end symbol. The model counts each k-gram (k = 1 … n) and
predicts the next symbol from the last n − 1 with one of two smoothings:

- `kneser-ney`: interpolated Kneser–Ney as Chen & Goodman (1998, "An empirical study of
  smoothing techniques", §3.5) define it, one discount per order, D = n1 / (n1 + 2·n2)
  (n1, n2: how many k-grams were seen once, twice):
      P(w | h) = max(c(h w) − D, 0) / c(h) + D · N1+(h •) / c(h) · P(w | h')
  where h' drops h's oldest symbol; an unseen context passes straight to P(w | h'). The
  highest order counts raw occurrences; the lower orders count continuations N1+(• h w)
  (how many different symbols come before), and the recursion ends in the uniform 1 / V,
  so every symbol of the vocabulary keeps some probability.
- `add-k`: (c(h w) + k) / (c(h) + k·V) on the n-grams alone (Laplace for k = 1).

V is the tokenizer's vocabulary (`token`) or the characters seen in training plus <s>, </s>
and <unk> (`char`; an unseen character is scored as <unk>, which flatters the model a little).

Bits per byte on held-out text is the measure `jielong eval --text` reports for a
transformer (`jielong.eval.heldout`): total negative log-likelihood of the text's symbols
(the end symbol is not scored) / ln 2 / UTF-8 bytes, each document scored from its start
(after the tokenizer's start token for `token`, as the transformer is); it does not depend
on the tokenizer, so the n-gram and the transformer compare on the same text. The held-out
text is `--heldout` or else every tenth document of DATA (never counted).

Writes OUT/ngram.json (settings, vocabulary, counts; plain JSON, no pickle), OUT/tokenizer/
for `token`, and OUT/results.json (bits per byte, perplexity, greedy and sampled text).
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from jielong.data.readers import iter_texts
from jielong.errors import UserError
from jielong.eval.heldout import HeldoutResult, start_id
from jielong.files import write_json
from jielong.tokenizer import Tokenizer

UNITS = ("token", "char")
SMOOTHINGS = ("kneser-ney", "add-k")
CHAR_SPECIALS = ("<s>", "</s>", "<unk>")  # ids 0, 1, 2 of a character vocabulary


class NGram:
    """Counts of k-grams (k = 1 … n) over integer symbols 0 … V − 1 and their smoothed
    next-symbol probabilities. `start` pads each document's front, `end` closes it."""

    def __init__(self, n: int, vocab_size: int, start: int, end: int,
                 smoothing: str = "kneser-ney", k: float = 1.0):
        if n < 1:
            raise UserError(f"--n {n}: the order must be 1 or more (3: trigrams)")
        if smoothing not in SMOOTHINGS:
            raise UserError(f"--smoothing {smoothing}: use one of {', '.join(SMOOTHINGS)}")
        if smoothing == "add-k" and k <= 0:
            raise UserError(f"--k {k}: add-k needs k > 0 (1: Laplace)")
        self.n, self.vocab_size, self.start, self.end = n, vocab_size, start, end
        self.smoothing, self.k = smoothing, k
        self.ngrams: Counter = Counter()  # raw counts of the n-grams
        self.tables: list[dict] = []
        self.discounts: list[float] = []

    def count(self, docs: Iterable[list[int]]) -> NGram:
        """Count the n-grams of `docs` (each a list of symbol ids) and build the tables."""
        for ids in docs:
            seq = [self.start] * (self.n - 1) + list(ids) + [self.end]
            for i in range(self.n - 1, len(seq)):
                self.ngrams[tuple(seq[i - self.n + 1:i + 1])] += 1
        return self.build()

    def build(self) -> NGram:
        """Order k's table: context → {next symbol: count}; raw counts for order n,
        continuation counts (distinct symbols before) for the lower orders."""
        levels: list[Counter] = [Counter() for _ in range(self.n + 1)]
        levels[self.n] = self.ngrams
        for order in range(self.n - 1, 0, -1):
            for gram in levels[order + 1]:
                levels[order][gram[1:]] += 1
        self.tables, self.discounts = [{}], [0.0]
        for order in range(1, self.n + 1):
            table: dict = defaultdict(dict)
            for gram, c in levels[order].items():
                table[gram[:-1]][gram[-1]] = c
            self.tables.append(dict(table))
            n1 = sum(1 for c in levels[order].values() if c == 1)
            n2 = sum(1 for c in levels[order].values() if c == 2)
            self.discounts.append(n1 / (n1 + 2 * n2) if n1 and n2 else 0.5)
        return self

    def prob(self, context: Sequence[int], w: int) -> float:
        """P(w | the last n − 1 symbols of `context`)."""
        h = tuple(context[len(context) - self.n + 1:]) if self.n > 1 else ()
        if self.smoothing == "add-k":
            nexts = self.tables[self.n].get(h, {})
            return (nexts.get(w, 0) + self.k) / (sum(nexts.values()) + self.k * self.vocab_size)
        p = 1.0 / self.vocab_size
        for order in range(1, self.n + 1):
            nexts = self.tables[order].get(h[len(h) - order + 1:] if order > 1 else ())
            if not nexts:
                continue
            total, d = sum(nexts.values()), self.discounts[order]
            p = max(nexts.get(w, 0) - d, 0) / total + d * len(nexts) / total * p
        return p

    def distribution(self, context: Sequence[int]) -> np.ndarray:
        """P(· | context) over the whole vocabulary (sums to 1)."""
        h = tuple(context[len(context) - self.n + 1:]) if self.n > 1 else ()
        if self.smoothing == "add-k":
            nexts = self.tables[self.n].get(h, {})
            p = np.full(self.vocab_size, self.k)
            for w, c in nexts.items():
                p[w] += c
            return p / p.sum()
        p = np.full(self.vocab_size, 1.0 / self.vocab_size)
        for order in range(1, self.n + 1):
            nexts = self.tables[order].get(h[len(h) - order + 1:] if order > 1 else ())
            if not nexts:
                continue
            total, d = sum(nexts.values()), self.discounts[order]
            p = p * (d * len(nexts) / total)
            ws = np.fromiter(nexts.keys(), dtype=np.int64, count=len(nexts))
            cs = np.fromiter(nexts.values(), dtype=np.float64, count=len(nexts))
            p[ws] += np.maximum(cs - d, 0) / total
        return p

    def score(self, ids: list[int]) -> float:
        """Negative log-likelihood (nats) of a document's symbols, from its start."""
        seq = [self.start] * max(self.n - 1, 1) + list(ids)
        pad = len(seq) - len(ids)
        return -sum(math.log(self.prob(seq[:i], seq[i])) for i in range(pad, len(seq)))

    def generate(self, length: int, temperature: float = 0.0, seed: int = 0,
                 prompt: Sequence[int] = ()) -> list[int]:
        """Up to `length` symbols after `prompt`: the most likely each time (temperature 0)
        or drawn from P^(1/T); stops at the end symbol. The start symbol is never chosen."""
        rng = np.random.default_rng(seed)
        seq = [self.start] * max(self.n - 1, 1) + list(prompt)
        out: list[int] = []
        for _ in range(length):
            p = self.distribution(seq)
            p[self.start] = 0.0
            if temperature <= 0:
                w = int(p.argmax())
            else:
                q = p ** (1.0 / temperature)
                w = int(rng.choice(len(q), p=q / q.sum()))
            if w == self.end:
                break
            out.append(w)
            seq.append(w)
        return out

    def to_json(self) -> dict:
        return {"n": self.n, "vocab_size": self.vocab_size, "start": self.start, "end": self.end,
                "smoothing": self.smoothing, "k": self.k, "discounts": self.discounts[1:],
                "ngrams": [[*g, c] for g, c in sorted(self.ngrams.items())]}

    @classmethod
    def from_json(cls, d: dict) -> NGram:
        m = cls(d["n"], d["vocab_size"], d["start"], d["end"], d["smoothing"], d["k"])
        m.ngrams = Counter({tuple(row[:-1]): row[-1] for row in d["ngrams"]})
        return m.build()


class Symbols:
    """Text ↔ symbol ids for one unit: a tokenizer's tokens, or characters."""

    def __init__(self, tok: Tokenizer | None = None, chars: Sequence[str] = ()):
        self.tok = tok
        self.chars = list(CHAR_SPECIALS) + [c for c in chars if c not in CHAR_SPECIALS]
        self.index = {c: i for i, c in enumerate(self.chars)}

    @property
    def vocab_size(self) -> int:
        return self.tok.vocab_size if self.tok else len(self.chars)

    @property
    def start(self) -> int:
        return start_id(self.tok) if self.tok else 0

    @property
    def end(self) -> int:
        return self.tok.eos_id if self.tok else 1

    def encode(self, text: str) -> list[int]:
        if self.tok:
            return self.tok.encode(text)
        return [self.index.get(c, 2) for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        if self.tok:
            return self.tok.decode(ids)
        return "".join(self.chars[i] for i in ids)


def bits_per_byte(model: NGram, symbols: Symbols, texts: Iterable[str]) -> HeldoutResult:
    """Perplexity and bits per byte of the n-gram on `texts`, as `jielong.eval.heldout`
    measures a transformer (the same result type, so the two sit side by side)."""
    doc_nll, doc_bytes, tokens = [], [], 0
    for text in texts:
        ids = symbols.encode(text)
        if not ids:
            continue
        doc_nll.append(model.score(ids))
        doc_bytes.append(len(text.encode("utf-8")))
        tokens += len(ids)
    nll, n_bytes = sum(doc_nll), sum(doc_bytes)
    return HeldoutResult(tokens=tokens, bytes=n_bytes, nll=nll,
                         ppl=math.exp(nll / tokens) if tokens else math.nan,
                         bits_per_byte=nll / math.log(2) / n_bytes if n_bytes else math.nan,
                         documents=len(doc_nll), doc_nll=doc_nll, doc_bytes=doc_bytes)


def train_ngram(
    data: list[str],
    out: str = "runs/ngram",
    n: int = 3,
    unit: str = "token",
    tokenizer: str | None = None,
    smoothing: str = "kneser-ney",
    k: float = 1.0,
    heldout: list[str] | None = None,
    field: str = "text",
    length: int = 60,
    samples: int = 3,
    temperature: float = 1.0,
    seed: int = 0,
) -> dict:
    """Count an n-gram language model and report its bits per byte and samples.

    Args:
        data: Text files or folders (.txt, .jsonl, .parquet).
        out: Output folder (ngram.json, results.json, tokenizer/ for --unit token).
        n: The order: 1 unigrams, 2 bigrams, 3 trigrams …
        unit: What a symbol is: token (a tokenizer's tokens) or char (characters).
        tokenizer: A tokenizer or model folder (with tokenizer.json); needed for --unit token.
        smoothing: kneser-ney (interpolated, Chen & Goodman) or add-k.
        k: The k of add-k smoothing (1: Laplace).
        heldout: Held-out text files for bits per byte; default: every tenth document of DATA.
        field: The text field of .jsonl/.parquet records.
        length: Symbols per generated sample.
        samples: How many sampled texts (besides the greedy one).
        temperature: Sampling temperature.
        seed: Random seed of the samples.
    """
    if unit not in UNITS:
        raise UserError(f"--unit {unit}: use token or char")
    if unit == "token" and not tokenizer:
        raise UserError("--unit token needs --tokenizer DIR (a folder with tokenizer.json); "
                        "or use --unit char")
    docs = list(iter_texts(data, field=field))
    if heldout:
        train, test = docs, list(iter_texts(heldout, field=field))
    else:
        train = [d for i, d in enumerate(docs) if i % 10 != 9]
        test = [d for i, d in enumerate(docs) if i % 10 == 9]
        if not test:
            raise UserError(f"{len(docs)} document(s) in DATA: too few to hold every tenth out; "
                            "give --heldout FILE")
    tok = Tokenizer.from_dir(tokenizer) if unit == "token" else None
    symbols = Symbols(tok, sorted({c for d in train for c in d}) if tok is None else ())
    model = NGram(n, symbols.vocab_size, symbols.start, symbols.end, smoothing, k)
    model.count(symbols.encode(d) for d in tqdm(train, desc="counting", unit=" docs", leave=False))
    result = bits_per_byte(model, symbols, tqdm(test, desc="held-out text", unit=" docs", leave=False))
    greedy = symbols.decode(model.generate(length, 0.0, seed))
    sampled = [symbols.decode(model.generate(length, temperature, seed + i)) for i in range(samples)]
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    saved = model.to_json() | {"unit": unit, "chars": symbols.chars if tok is None else None}
    write_json(out_dir / "ngram.json", saved)
    if tok is not None:
        tok.save(out_dir / "tokenizer")
    summary = {"n": n, "unit": unit, "smoothing": smoothing, "vocab_size": symbols.vocab_size,
               "train_documents": len(train), "ngrams": len(model.ngrams),
               "heldout": {"documents": result.documents, "tokens": result.tokens,
                           "bytes": result.bytes, "ppl": result.ppl,
                           "bits_per_byte": result.bits_per_byte},
               "greedy": greedy, "samples": sampled}
    write_json(out_dir / "results.json", summary)
    print(f"{n}-gram ({unit}, {smoothing}): {len(model.ngrams)} n-grams from {len(train)} documents")
    print(f"held-out text: bits per byte {result.bits_per_byte:.4f}  perplexity {result.ppl:.3f}  "
          f"({result.documents} documents, {result.bytes} bytes)")
    print(f"greedy:  {greedy!r}")
    for s in sampled:
        print(f"sampled: {s!r}")
    print(f"wrote {out_dir / 'ngram.json'} and {out_dir / 'results.json'}")
    return summary


def load_ngram(path: str | Path) -> tuple[NGram, Symbols]:
    """The model and symbols `jielong train ngram` wrote to folder `path`."""
    d = json.loads((Path(path) / "ngram.json").read_text(encoding="utf-8"))
    tok = Tokenizer.from_dir(Path(path) / "tokenizer") if d["unit"] == "token" else None
    return NGram.from_json(d), Symbols(tok, d["chars"] or ())
