"""The numbers of the quality and repetition rules, per language, with their sources
(Gopher, C4, FineWeb, FineWeb-2), and the presets that choose them.

    from jielong.prep.thresholds import preset_thresholds
    quality, repetition = preset_thresholds("literature")   # {lang: thresholds} each
    quality["zh"].min_words                                  # 8 (web: 50)

`QualityThresholds` and `RepetitionThresholds` hold one language's rules (None turns a
rule off); QUALITY_THRESHOLDS and REPETITION_THRESHOLDS are the web defaults, and
LITERATURE_THRESHOLDS / LITERATURE_REPETITION what the literature preset changes.
`merged_thresholds` applies a user's per-language changes, checking their names.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from jielong.errors import UserError
from jielong.prep.language import LANGS

GOPHER_STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
# FineWeb-2 configs/cmn_Hani.yml (huggingface/fineweb-2, commit 05e6729), then 与 后 于: the
# Simplified forms of its 與 後 於, so both scripts are held to the same list.
ZH_STOP_WORDS = ("的", "年", "在", "月", "是", "和", "日", "了", "於", "·", "為", "有", "被", "人",
                 "中", "为", "他", "與", "後", "也", "而", "由", "与", "后", "于")


@dataclass(frozen=True)
class QualityThresholds:
    """One language's quality rules; None turns a rule off. "Words" are `words_of`'s: jieba
    words for Chinese, whitespace tokens otherwise."""

    min_words: int | None = 50                # Gopher: 50 to 100,000 non-symbol words
    max_words: int | None = 100_000
    min_avg_word_length: float | None = 3     # Gopher: mean non-symbol word length 3-10
    max_avg_word_length: float | None = 10
    max_symbol_word_ratio: float | None = 0.1  # Gopher: "#" and ellipses per word
    max_bullet_lines: float | None = 0.9      # Gopher: share of lines starting with a bullet
    max_ellipsis_lines: float | None = 0.3    # Gopher: share of lines ending with an ellipsis
    min_alpha_words: float | None = 0.8       # Gopher: share of words with a letter (Han included)
    min_stop_words: int | None = 2            # Gopher: at least 2 stop words
    stop_words: tuple[str, ...] = GOPHER_STOP_WORDS
    min_punct_lines: float | None = 0.12      # FineWeb: share of lines ending a sentence
    max_newline_ratio: float | None = 0.3     # FineWeb: newlines per word (list-like pages)


# English: the Gopher paper's numbers (Rae et al. 2021, table A1) and FineWeb's two line
# rules (Penedo et al. 2024). Chinese: FineWeb-2's configs/cmn_Hani.yml (huggingface/
# fineweb-2, commit 05e6729; other versions of the file, e.g. commit baedee4, have line
# punctuation 0.19, newline ratio 0.233 and laxer n-gram limits) where it sets a number:
# mean word length 1-5, line punctuation 0.106, its stop words (ZH_STOP_WORDS); Gopher's
# otherwise, as FineWeb-2's pipeline kept them (length 50-100,000 words, symbols, bullets,
# ellipses, 2 stop words).
# Two of FineWeb-2's numbers are not used, because they count words another way: its
# tokenizer makes every "，" and "。" a word, so its alpha-word share (0.735) and newline
# ratio (0.178) sit a punctuation mark's worth below what the same text gives with
# `words_of`'s words, where a mark belongs to its word as in Gopher's whitespace words. With
# Gopher's words we use Gopher's alpha share (0.8) and FineWeb's newline ratio scaled by the
# words lost (one in five: 0.178 × 1.25 ≈ 0.22). Measured on tests/prep/
# quality_labelled.jsonl and the shared corpora: bench/bench_quality_rules.py, bench/RESULTS.md.
# These are tuned for web text. Verse and classical Chinese fall below them: most poems are
# under 50 words, and verse has few modern function words and short lines. For literature:
# LITERATURE_THRESHOLDS (`jielong data clean --quality_preset literature`).
LITERATURE_THRESHOLDS = {"zh": {"min_words": 8, "min_stop_words": None, "max_newline_ratio": None}}
# A five-character quatrain (靜夜思, 春曉) is 20 characters, 11-15 words with its title and
# poet; the shortest ci (十六字令) 16 characters: 8 words keeps every complete poem.
QUALITY_THRESHOLDS: dict[str, QualityThresholds] = {
    "en": QualityThresholds(),
    "zh": QualityThresholds(min_avg_word_length=1, max_avg_word_length=5, min_alpha_words=0.8,
                            stop_words=ZH_STOP_WORDS, min_punct_lines=0.106,
                            max_newline_ratio=0.22),
    # No word rules for languages this project does not read; drop them with
    # LanguageScript(keep=...) if they are not wanted at all.
    "other": QualityThresholds(min_words=None, max_words=None, min_avg_word_length=None,
                               max_avg_word_length=None, max_symbol_word_ratio=None,
                               min_alpha_words=None, min_stop_words=None, min_punct_lines=None,
                               max_newline_ratio=None),
}

# C4's page-level and line-level boilerplate (Raffel et al. 2020), made specific: C4 drops
# every line that says "javascript"; these only the lines that ask for it to be turned on,


@dataclass(frozen=True)
class RepetitionThresholds:
    """One language's repetition rules (maximum shares); None turns a rule off.
    top_ngrams: {n: share of characters in the commonest n-gram};
    dup_ngrams: {n: share of characters in n-grams seen before in the document}."""

    dup_lines: float | None = 0.3
    dup_line_chars: float | None = 0.2
    dup_paras: float | None = 0.3
    dup_para_chars: float | None = 0.2
    top_ngrams: tuple[tuple[int, float], ...] = ((2, 0.20), (3, 0.18), (4, 0.16))
    dup_ngrams: tuple[tuple[int, float], ...] = ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12),
                                                 (9, 0.11), (10, 0.10))


# English: Gopher's table A1 (Rae et al. 2021). Chinese: FineWeb-2 — its cmn_Hani config
# (commit 05e6729) for the duplicate-line share and the n-gram shares, and its pipeline's
# 0.1 for the characters in duplicate lines (FineWeb's char_duplicates_ratio, raised from
# 0.01). FineWeb-2 measured n-grams of jieba words, and so do we: these limits are for word
# n-grams. (Character n-grams, which an earlier version used, are about a third as long: a
# name of five characters said twice, 中華人民共和國 or 阿瓦隆尼亞大陸, made a Wikipedia
# paragraph "repetitive".) The paragraph rules are Gopher's (FineWeb-2 switched them off:
# trafilatura's output has few paragraphs).
REPETITION_THRESHOLDS: dict[str, RepetitionThresholds] = {
    "en": RepetitionThresholds(),
    "zh": RepetitionThresholds(dup_lines=0.287, dup_line_chars=0.1,
                               top_ngrams=((2, 0.256), (3, 0.201), (4, 0.171)),
                               dup_ngrams=((5, 0.198), (6, 0.182), (7, 0.167), (8, 0.154),
                                           (9, 0.14), (10, 0.127))),
    "other": RepetitionThresholds(),
}
# Verse repeats by design: the Book of Songs' refrains, a ci's repeated tune lines. In the
# literature preset the n-gram rules are off for Chinese; duplicate lines and paragraphs
# (a page pasted twice, spam) still count.
LITERATURE_REPETITION = {"zh": {"top_ngrams": (), "dup_ngrams": ()}}
PRESETS = ("web", "literature")


def preset_thresholds(preset: str = "web") -> tuple[dict[str, QualityThresholds],
                                                    dict[str, RepetitionThresholds]]:
    """({lang: quality thresholds}, {lang: repetition thresholds}) of a preset: "web"
    (Gopher / C4 / FineWeb(-2), for crawled text) or "literature" (poems, lyrics, classical
    prose: short complete texts, verse repeating by design)."""
    if preset not in PRESETS:
        raise UserError(f"quality preset {preset!r}: presets are {', '.join(PRESETS)}")
    if preset == "web":
        return dict(QUALITY_THRESHOLDS), dict(REPETITION_THRESHOLDS)
    return (merged_thresholds(QUALITY_THRESHOLDS, LITERATURE_THRESHOLDS, QualityThresholds),
            merged_thresholds(REPETITION_THRESHOLDS, LITERATURE_REPETITION, RepetitionThresholds))


def merged_thresholds(defaults: dict, overrides: dict | None, cls) -> dict:
    """{lang: thresholds}: `defaults` with `overrides` applied, each a `cls` (replacing the
    language's) or a dict of its fields to change; unknown languages or fields are an error."""
    out = dict(defaults)
    for lang, value in (overrides or {}).items():
        if lang not in LANGS:
            raise UserError(f"lang_thresholds: unknown language {lang!r}; use {', '.join(LANGS)}")
        if isinstance(value, cls):
            out[lang] = value
            continue
        fields = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(value) - fields)
        if bad:
            raise UserError(f"lang_thresholds[{lang!r}]: unknown settings {bad}; known: "
                            f"{', '.join(sorted(fields))}")
        value = {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}
        out[lang] = dataclasses.replace(out[lang], **value)
    return out

