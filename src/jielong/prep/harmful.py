"""Harmful content: a transparent lexicon of sexual, violent, hateful and self-harm terms
in English and Chinese (lexicon/*.txt, with an allow-list), optionally a classifier
trained by `jielong train classify`, and the `HarmfulFilter` step that drops by them.

    from jielong.prep.harmful import Lexicon
    Lexicon.load().hits(text)   # {"violence": Counter({"massacre*": 2})} for the categories hit

A term matches as a whole word in English (a hyphen or space inside it matches any run of
them, a final * any ending) and as a substring in Chinese, in Traditional and Simplified
alike; "…" inside a term stands for a short gap in one sentence ("安眠藥…吞" finds 把安眠藥都存起來了，
打算今晚全部吞下去: up to GAP_CHARS characters in Chinese, GAP_WORDS words in English); a hit
inside an allow-listed phrase ("breast cancer", "殺死細菌") does not count.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter

from jielong.classifier import encode_texts, load_classifier, predict_logits
from jielong.errors import UserError
from jielong.prep.language import HAN, converter

LEXICON_DIR = Path(__file__).parent / "lexicon"
CATEGORIES = ("sexual", "violence", "hate", "self_harm")
GAP = "…"  # in a term: a short gap inside one sentence
GAP_CHARS = 12  # Chinese: at most this many characters, none of them 。！？； or a newline
GAP_WORDS = 4  # English: at most this many words, no . ! ? ; or newline between
SAFE_LABELS = frozenset({"safe", "ok", "clean", "benign", "harmless", "neutral", "none", "ham",
                         "negative", "not_harmful", "non_harmful", "0"})


def read_terms(path: Path) -> list[str]:
    """The terms of a lexicon file: one a line, "#" starts a comment, blank lines skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"{path}: lexicon file not found") from None
    terms = []
    for line in lines:
        term = line.split("#", 1)[0].strip()
        if term:
            terms.append(term)
    return terms


def _fold(s: str) -> str:
    return unicodedata.normalize("NFKC", s).casefold()


def _key(s: str) -> str:
    return re.sub(r"[\s\-]+", "", _fold(s))


def _term_pattern(term: str) -> str:
    """A regex for one term: Chinese (any Han character) as a literal substring; otherwise
    whole words, where a space or hyphen matches any run of them (or none: "blow job",
    "blow-job", "blowjob") and a final * any word ending. "…" joins parts with a short gap
    inside one sentence (GAP_CHARS characters in a Chinese term, GAP_WORDS words otherwise)."""
    folded = _fold(term)
    if _fold(GAP) in folded:  # NFKC writes "…" as "..."
        gap = (rf"[^。!?;\n]{{0,{GAP_CHARS}}}?" if HAN.search(folded)
               else rf"(?:[^a-z0-9.!?;\n]+[a-z0-9']+){{0,{GAP_WORDS}}}?[^a-z0-9.!?;\n]*")
        return gap.join(_term_pattern(p) for p in folded.split(_fold(GAP)) if p.strip())
    if HAN.search(folded):
        return re.escape(folded)
    stem, wild = (folded[:-1], True) if folded.endswith("*") else (folded, False)
    parts = [re.escape(p) for p in re.split(r"[\s\-]+", stem) if p]
    body = r"[\s\-]*".join(parts) + (r"[a-z0-9]*" if wild else "")
    return _WORD_START + body + r"(?![a-z0-9])"


def _variants(term: str) -> set[str]:
    """A Chinese term in its own script and OpenCC's other ones (t2s, s2t, s2tw)."""
    if not HAN.search(term):
        return {term}
    return {term} | {converter(c).convert(term) for c in ("t2s", "s2t", "s2tw")}


_WORD_START = r"(?<![a-z0-9])"
_WORD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")


class _Alternation:
    """The terms' patterns as two regexes, so that each opens with a literal character and
    Python's re skips, by the set of first characters, the places no term can start: one for
    the Chinese terms, one for the others with their leading word-start check done here (a
    look-behind in front would make re try every term at every place: 3-5x slower)."""

    def __init__(self, terms: Iterable[str]):
        pats = sorted({_term_pattern(v) for t in terms for v in _variants(t)}, key=len, reverse=True)
        words = [p.removeprefix(_WORD_START) for p in pats if p.startswith(_WORD_START)]
        han = [p for p in pats if not p.startswith(_WORD_START)]
        self.han = re.compile("|".join(han)) if han else None
        self.words = re.compile("|".join(words)) if words else None

    def finditer(self, folded: str) -> Iterator[re.Match]:
        if self.han is not None:
            yield from self.han.finditer(folded)
        if self.words is not None:
            pos = 0
            while m := self.words.search(folded, pos):
                start = m.start()
                if start and folded[start - 1] in _WORD_CHARS:
                    pos = start + 1  # inside a word: look again from the next character
                    continue
                yield m
                pos = max(m.end(), start + 1)


def _alternation(terms: Iterable[str]) -> _Alternation | None:
    alt = _Alternation(terms)
    return alt if alt.han is not None or alt.words is not None else None


@dataclass
class Lexicon:
    """Harmful-term lists by category and an allow-list (see lexicon/*.txt).

    Matching runs on NFKC-folded, lower-cased text: English terms as whole words, Chinese
    terms as substrings in either script, "…" as a short gap inside one sentence. A hit that
    overlaps an allow-list phrase ("breast cancer", "出口交易", "殺死細菌") is not a hit.
    """

    terms: dict[str, list[str]]
    allow: list[str]

    def __post_init__(self):
        self._patterns = {c: _alternation(ts) for c, ts in self.terms.items()}
        self._allow = _alternation(self.allow)
        self._exact = {}  # folded variant -> the first term (as written) that has it
        for c, ts in self.terms.items():
            exact = self._exact[c] = {}
            for t in ts:
                for v in sorted(_variants(t)) if not t.endswith("*") and GAP not in t else ():
                    exact.setdefault(_key(v), t)
        self._prefix = {c: [(_key(t[:-1]), t) for t in ts if t.endswith("*") and GAP not in t]
                        for c, ts in self.terms.items()}
        self._gapped = {c: [(re.compile(_term_pattern(v)), t) for t in ts if GAP in t
                            for v in sorted(_variants(t))] for c, ts in self.terms.items()}

    @classmethod
    def load(cls, directory: str | Path | None = None, categories: Sequence[str] | None = None) -> Lexicon:
        """The lexicon in `directory` (default: the built-in one): CATEGORY.txt per category
        and allow.txt."""
        d = Path(directory) if directory is not None else LEXICON_DIR
        cats = list(categories) if categories is not None else [
            c for c in CATEGORIES if (d / f"{c}.txt").exists()] + sorted(
            p.stem for p in d.glob("*.txt") if p.stem not in (*CATEGORIES, "allow"))
        if not cats:
            raise UserError(f"{d}: no lexicon files (CATEGORY.txt, e.g. sexual.txt)")
        missing = [c for c in cats if not (d / f"{c}.txt").is_file()]
        if missing:
            have = sorted(p.stem for p in d.glob("*.txt") if p.stem != "allow")
            raise UserError(f"categories {missing}: not in the lexicon {d} (it has {', '.join(have)})")
        allow = read_terms(d / "allow.txt") if (d / "allow.txt").exists() else []
        return cls({c: read_terms(d / f"{c}.txt") for c in cats}, allow)

    def _canonical(self, cat: str, matched: str) -> str:
        k = _key(matched)
        if k in self._exact[cat]:
            return self._exact[cat][k]
        for prefix, term in self._prefix[cat]:
            if k.startswith(prefix):
                return term
        for pattern, term in self._gapped[cat]:
            if pattern.fullmatch(matched):
                return term
        return matched

    def find(self, text: str) -> list[tuple[str, str, int, int]]:
        """(category, term as written in the lexicon, start, end) of every hit, the offsets in
        the NFKC-folded, lower-cased text (the same length as `text` for most Chinese and
        English)."""
        folded = _fold(text)
        masks: list[tuple[int, int]] = []
        for a, b in sorted((m.start(), m.end()) for m in self._allow.finditer(folded)) if self._allow else ():
            if masks and a < masks[-1][1]:
                masks[-1] = (masks[-1][0], max(b, masks[-1][1]))  # merge overlapping spans
            else:
                masks.append((a, b))
        starts = [s for s, _ in masks]
        out = []
        for cat, pattern in self._patterns.items():
            if pattern is None:
                continue
            for m in sorted(pattern.finditer(folded), key=lambda m: m.start()):
                # Allow-list spans (merged) don't overlap one another, so of those starting
                # before the hit ends, the last reaches furthest.
                i = bisect_left(starts, m.end())
                if i and masks[i - 1][1] > m.start():
                    continue  # overlaps an allow-listed phrase
                out.append((cat, self._canonical(cat, m.group()), m.start(), m.end()))
        return out

    def hits(self, text: str) -> dict[str, Counter]:
        """{category: Counter(term -> occurrences)} for the categories with any hit; terms
        are named as written in the lexicon file."""
        out: dict[str, Counter] = {}
        for cat, term, _, _ in self.find(text):
            out.setdefault(cat, Counter())[term] += 1
        return out


def text_units(text: str) -> int:
    """Han characters + other words: the denominator of hit density."""
    return len(HAN.findall(text)) + len(re.findall(r"[^\W\d_\u3400-\u9fff]+", HAN.sub(" ", text)))


class HarmfulFilter(BaseFilter):
    """Drops sexual, violent, hateful and self-harm content by a transparent lexicon
    (`Lexicon`, lexicon/*.txt: English, Traditional and Simplified Chinese) and, optionally,
    a classifier.

    Scoring, per category: a document is dropped ("harmful_<category>") when it has at
    least `min_terms` distinct terms of the category, or at least 2 distinct terms whose
    hits make up more than `max_density` of its units (Han characters + words; 0.01 = one
    hit per 100). One word, however often, never decides alone: an article that keeps
    saying "massacre" is history, a page of several explicit terms is not. The category
    with the most hits names the reason. Every document with hits carries
    metadata["harmful"] = {category: [terms]}, so a person can audit what matched.

    categories: which categories to apply (default: all files in `lexicon_dir`; for the
        built-in lexicon, the four above — illegal.txt and minors.txt serve jielong.safety).
    classifier: a directory written by `jielong train classify` whose labels include one
        safe class ("safe", "ok", "clean", "benign", "0", …): documents whose probability of
        the other classes reaches `threshold` are dropped as "harmful_<label>" (the likeliest
        harmful label when it is a category name, else "harmful_classifier");
        metadata["harmful_score"] holds that probability.
    lexicon_dir: another lexicon directory, same layout.
    """

    name = "⚠️ Harmful"

    def __init__(self, categories: list[str] | None = None, classifier: str | None = None,
                 threshold: float = 0.5, min_terms: int = 3, max_density: float = 0.01,
                 lexicon_dir: str | None = None, max_len: int = 512, batch_size: int = 16,
                 exclusion_writer=None):
        super().__init__(exclusion_writer, batch_size=batch_size if classifier else 1)
        if categories is None and lexicon_dir is None:
            categories = list(CATEGORIES)  # illegal.txt, minors.txt: for the serving guardrails
        self.lexicon = Lexicon.load(lexicon_dir, categories)
        if not 0 < threshold <= 1:
            raise UserError(f"threshold={threshold} must be in (0, 1]")
        self.classifier, self.threshold = classifier, threshold
        self.min_terms, self.max_density, self.max_len = min_terms, max_density, max_len
        self._model = None
        if classifier is not None and not Path(classifier, "config.json").is_file():
            raise UserError(f"{classifier}: not a classifier directory (no config.json); pass the "
                            "model/ directory that `jielong train classify` wrote")

    def lexicon_reason(self, doc: Document) -> str | None:
        hits = self.lexicon.hits(doc.text)
        if not hits:
            return None
        doc.metadata["harmful"] = {c: sorted(h) for c, h in hits.items()}
        units = max(1, text_units(doc.text))
        worst = None
        for cat, h in hits.items():
            n = sum(h.values())
            self.stat_update(f"hits_{cat}", value=n)
            if len(h) >= self.min_terms or (len(h) >= 2 and n / units > self.max_density):
                if worst is None or n > worst[1]:
                    worst = (cat, n)
        return None if worst is None else f"harmful_{worst[0]}"

    def _load(self):
        if self._model is None:
            clf, tok = load_classifier(self.classifier)
            safe = [i for i, name in enumerate(clf.labels) if name.strip().lower() in SAFE_LABELS]
            if len(safe) != 1 or len(clf.labels) < 2:
                raise UserError(f"{self.classifier}: labels {clf.labels}: exactly one must name the "
                                f"safe class ({', '.join(sorted(SAFE_LABELS))})")
            self._model = (clf, tok, safe[0])
        return self._model

    def scores(self, texts: list[str]) -> list[tuple[str, float]]:
        """(likeliest harmful label, probability of any harmful label) per text."""
        clf, tok, safe = self._load()
        max_len = min(self.max_len, clf.config.max_position_embeddings)
        ids, _ = encode_texts(tok, texts, max_len)
        ids = [s or [clf.config.pad_token_id] for s in ids]
        probs = predict_logits(clf, ids, clf.config.pad_token_id, max(1, self.batch_size)).softmax(-1)
        out = []
        for p in probs:
            harmful = 1 - float(p[safe])
            others = p.clone()
            others[safe] = -1
            out.append((clf.labels[int(others.argmax())], harmful))
        return out

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        return self.filter_batch([doc])[0]

    def filter_batch(self, batch: list[Document]) -> list[bool | tuple[bool, str]]:
        results: list[bool | tuple[bool, str]] = []
        pending = []
        for i, doc in enumerate(batch):
            reason = self.lexicon_reason(doc)
            results.append(True if reason is None else (False, reason))
            if reason is None and self.classifier is not None:
                pending.append(i)
        if pending:
            scored = self.scores([batch[i].text for i in pending])
            for i, (label, p) in zip(pending, scored, strict=True):
                batch[i].metadata["harmful_score"] = round(p, 4)
                if p >= self.threshold:
                    name = label if label in CATEGORIES else "classifier"
                    results[i] = (False, f"harmful_{name}")
        return results

