"""Gopher's repetition rules on one document, with word n-grams for English and jieba-word
n-grams for Chinese, and the `RepetitionFilter` step that applies them.

    from jielong.prep.repetition import repetition_reason
    from jielong.prep.thresholds import REPETITION_THRESHOLDS
    repetition_reason(text, "zh", REPETITION_THRESHOLDS["zh"])   # None, or e.g. "dup_lines"

The rules, in order: duplicate lines and paragraphs (by count and by characters), the
commonest 2-, 3- and 4-gram's share of the characters, and the share of characters in
5- to 10-grams seen before in the document.
"""

from __future__ import annotations

import re
from collections import Counter

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter

from jielong.prep.language import lang_of
from jielong.prep.thresholds import RepetitionThresholds, merged_thresholds, preset_thresholds
from jielong.prep.words import PUNCT_STR, words_of

_EN_WORD = re.compile(r"\w+")


def _units(text: str, lang: str) -> list[str]:
    """What n-grams are made of: lower-cased words without their punctuation; for Chinese,
    `words_of`'s (jieba words for Han text)."""
    if lang == "zh":
        return [u for w in words_of(text, "zh") if (u := w.strip(PUNCT_STR).casefold())]
    return _EN_WORD.findall(text.casefold())


def _dup_share(items: list[str]) -> tuple[float, float]:
    """(share of items seen before, share of characters in them)."""
    seen, dup, dup_chars = set(), 0, 0
    for x in items:
        if x in seen:
            dup += 1
            dup_chars += len(x)
        else:
            seen.add(x)
    total = sum(map(len, items)) or 1
    return dup / max(1, len(items)), dup_chars / total


def _ngrams(units: list[str], n: int) -> list:
    return [tuple(units[i:i + n]) for i in range(len(units) - n + 1)]


def repetition_reason(text: str, lang: str, t: RepetitionThresholds) -> str | None:
    """Why `text` is too repetitive under `t`, or None."""
    lines = [x.strip() for x in text.split("\n") if x.strip()]
    frac, chars = _dup_share(lines)
    if t.dup_lines is not None and frac > t.dup_lines:
        return "dup_lines"
    if t.dup_line_chars is not None and chars > t.dup_line_chars:
        return "dup_line_chars"
    paras = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    frac, chars = _dup_share(paras)
    if t.dup_paras is not None and frac > t.dup_paras:
        return "dup_paras"
    if t.dup_para_chars is not None and chars > t.dup_para_chars:
        return "dup_para_chars"
    units = _units(text, lang)
    sizes = [len(u) for u in units]  # characters per unit
    total = sum(sizes)
    if not total:
        return None
    for n, limit in t.top_ngrams:
        grams = _ngrams(units, n)
        if not grams:
            continue
        gram, count = Counter(grams).most_common(1)[0]
        if count > 1 and count * sum(map(len, gram)) / total > limit:
            return f"top_{n}gram"
    for n, limit in t.dup_ngrams:
        grams = _ngrams(units, n)
        seen, covered = set(), bytearray(len(sizes))
        for i, g in enumerate(grams):
            if g in seen:
                covered[i:i + n] = b"\x01" * n
            else:
                seen.add(g)
        if sum(s for s, c in zip(sizes, covered, strict=True) if c) / total > limit:
            return f"dup_{n}gram"
    return None


class RepetitionFilter(BaseFilter):
    """Gopher's repetition rules (`repetition_reason`): duplicate lines and paragraphs (by
    count and by characters), the commonest 2-, 3-, 4-gram's share of the characters, and the
    share in repeated 5- to 10-grams, all n-grams of words (jieba words for Chinese).

    lang_thresholds: per language, a `RepetitionThresholds` or a dict of its fields to change;
        see REPETITION_THRESHOLDS for the defaults and their sources.
    preset: the thresholds lang_thresholds change: "web" or "literature" (`preset_thresholds`).
    """

    name = "🔁 Repetition"

    def __init__(self, lang_thresholds: dict | None = None, exclusion_writer=None,
                 preset: str = "web"):
        super().__init__(exclusion_writer)
        self.thresholds = merged_thresholds(preset_thresholds(preset)[1], lang_thresholds, RepetitionThresholds)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        lang = lang_of(doc)
        reason = repetition_reason(doc.text, lang, self.thresholds[lang])
        return True if reason is None else (False, reason)

