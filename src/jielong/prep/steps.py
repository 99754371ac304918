"""Per-document cleaning steps for pretraining text in English and Chinese (Traditional and
Simplified): datatrove pipeline steps over `datatrove.data.Document` (text, id, metadata).

    from datatrove.executor import LocalPipelineExecutor
    from jielong.prep.steps import (HarmfulFilter, HtmlExtract, LanguageScript, Normalize,
                                    PiiRedact, QualityFilter, RepetitionFilter)
    steps = [HtmlExtract(), Normalize(), LanguageScript(keep=["zh", "en"], convert="s2t"),
             QualityFilter(), RepetitionFilter(), HarmfulFilter(), PiiRedact()]
    LocalPipelineExecutor([reader, *steps, writer], tasks=1, logging_dir="logs").run()

`jielong data clean IN... --out DIR` composes these (with readers, de-duplication and the
quality classifier). In the order they are meant to run:

  HtmlExtract       HTML pages -> their main text (trafilatura); drops pages with none
  Normalize         repairs mojibake (ftfy), NFC, strips control characters, collapses runs
                    of spaces and blank lines; keeps emoji and full-width CJK punctuation
  LanguageScript    metadata["lang"] (zh/en/other) and, for Chinese, metadata["script"]
                    (Hant/Hans/mixed); optional OpenCC conversion; optional language filter
  QualityFilter     Gopher / C4 / FineWeb rules with per-language thresholds (jieba words
                    for Chinese)
  RepetitionFilter  Gopher repetition rules (character n-grams for Chinese)
  HarmfulFilter     a transparent lexicon (lexicon/*.txt) and, optionally, a classifier
                    trained by `jielong train classify`
  PiiRedact         e-mails, phones, IDs, cards, IPs and credentials -> <TYPED> placeholders

The filters are datatrove `BaseFilter`s: each counts what it kept and dropped (stats
"dropped_<reason>"), and `exclusion_writer=JsonlWriter(...)` keeps the dropped documents with
metadata["filter_reason"] so a person can see why. The functions under the steps (`normalize_text`, `detect_lang`, `han_script`,
`quality_reason`, `repetition_reason`, `Lexicon`) work on plain strings too.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import unicodedata
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.formatters.base import BaseFormatter

from jielong.errors import UserError
from jielong.prep import pii

LANGS = ("zh", "en", "other")
OPENCC_CONFIGS = ("s2t", "t2s", "s2tw", "tw2s", "s2twp", "tw2sp", "s2hk", "hk2s", "t2tw", "tw2t")

# ------------------------------------------------------------------------------ characters

_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]")
# Kana without ・ (U+30FB) and ー (U+30FC), which Chinese text uses too.
_KANA = re.compile(r"[\u3040-\u309f\u30a0-\u30fa\u30fd-\u30ff\u31f0-\u31ff]")
_HANGUL = re.compile(r"[\uac00-\ud7af\u1100-\u11ff\u3130-\u318f]")
_LATIN_WORD = re.compile(r"[A-Za-z\u00c0-\u024f]+")

# The commonest English words: a Latin-script text is English when enough of its words are
# among them (about a quarter of running English text is; French or German text has few).
_EN_COMMON = frozenset("""the of and to a in is was that it for on with as be by at this are not
you i he she we they his her have had or from but an my me your will would what which so if no
do all their there were been has one who them him our can said thou thee thy shall""".split())


@functools.cache
def _opencc(config: str):
    import opencc

    if config not in OPENCC_CONFIGS:
        raise UserError(f"unknown OpenCC conversion {config!r}; use one of {', '.join(OPENCC_CONFIGS)}")
    return opencc.OpenCC(config)


def detect_lang(text: str) -> str:
    """"zh", "en" or "other", by character classes (no language-ID model).

    Han characters are weighed against Latin words at 1.5 characters a word (about what a
    Chinese word is); kana beside the Han (5% or more) make it Japanese, Hangul Korean, and
    other letters (Cyrillic, Arabic, …) count by themselves, all as "other". A Latin text is
    English when at least 8% of its words are common English words (or, under 8 words, when
    it has no accented letters).
    """
    han = len(_HAN.findall(text))
    kana = len(_KANA.findall(text))
    hangul = len(_HANGUL.findall(text))
    words = _LATIN_WORD.findall(text)
    latin = sum(map(len, words))
    other = sum(c.isalpha() for c in text) - han - kana - hangul - latin
    japanese = kana >= max(2, 0.05 * (han + kana))
    scores = {
        "zh": 0.0 if japanese else han / 1.5,
        "latin": len(words),
        "other": (kana + hangul + (han if japanese else 0)) / 1.5 + other / 5,
    }
    best = max(scores, key=scores.get)
    if scores[best] == 0:
        return "other"
    if best != "latin":
        return best
    if len(words) < 8:
        return "en" if all(w.isascii() for w in words) else "other"
    common = sum(w.lower() in _EN_COMMON for w in words)
    return "en" if common >= 0.08 * len(words) else "other"


# Characters that OpenCC changes one way or the other but that are standard in both scripts
# (后 queen, 里 a mile, 云 "says", 余 "I", 干 shield, 乾 heaven, 於 a surname, 群/峰/床 and
# other variants OpenCC prefers another form of): they are no evidence either way. Measured:
# these were most of the "Simplified" characters OpenCC's s2t flags in Traditional Tang poems.
_BOTH_SCRIPTS = frozenset("后里云余干台于斗采征游咸辟郁岳范占凶朴准党吃夸几丑群峰岩床恒秘唇熏"
                          "厘灶刹皂乾於徵麽")


@functools.cache
def _telling(ch: str) -> int:
    """+1: a Traditional-only character (OpenCC's t2s changes it), -1: Simplified-only (s2t
    changes it), 0: either."""
    if ch in _BOTH_SCRIPTS:
        return 0
    if _opencc("t2s").convert(ch) != ch:
        return 1
    if _opencc("s2t").convert(ch) != ch:
        return -1
    return 0


def han_script(text: str, margin: float = 4.0) -> tuple[str, int, int]:
    """("Hant" | "Hans" | "mixed", Traditional-only count, Simplified-only count).

    Every Han character is looked up in OpenCC's tables: one that t2s changes is
    Traditional-only, one that s2t changes is Simplified-only (characters standard in both,
    `_BOTH_SCRIPTS`, count for neither). One side wins when it has at least `margin` times
    the other's count; otherwise, and when there is no telling character at all, "mixed".
    """
    trad = simp = 0
    for ch in _HAN.findall(text):
        t = _telling(ch)
        trad += t > 0
        simp += t < 0
    if trad and trad >= margin * simp:
        return "Hant", trad, simp
    if simp and simp >= margin * trad:
        return "Hans", trad, simp
    return "mixed", trad, simp


# ------------------------------------------------------------------------------- HtmlExtract

_HTML_START = re.compile(r"\A\ufeff?\s*(?:<!--.*?-->\s*)*<(?:!doctype\s+html|html[\s>]|head[\s>]|body[\s>])",
                         re.I | re.S)


def looks_like_html(text: str) -> bool:
    """True for a whole HTML document (it starts with <!DOCTYPE html>, <html>, <head> or
    <body>), not for text that merely contains a tag."""
    return bool(_HTML_START.match(text[:2000]))


# The zero-width joiner, literal or as an entity. trafilatura drops every non-printable
# character, and ZWJ is one (category Cf), which splits emoji sequences: ❤️‍🔥 became ❤️🔥 and
# 👩‍👩‍👧 three people. It travels through trafilatura as a marker of printable letters instead.
_ZWJ = re.compile(r"\u200d|&zwj;|&#0*8205;|&#x0*200d;", re.I)
_ZWJ_MARK = "ZwJqXjZw"


def extract_html(html: str, favor_precision: bool = True, include_tables: bool = True) -> str:
    """The main text of an HTML page (trafilatura): no navigation, scripts, styles, footers
    or comments; emoji (ZWJ sequences whole) and punctuation as written. "" when there is
    none."""
    import trafilatura

    joined = _ZWJ_MARK not in html and _ZWJ.search(html) is not None
    if joined:
        html = _ZWJ.sub(_ZWJ_MARK, html)
    text = trafilatura.extract(html, output_format="txt", include_comments=False,
                               include_tables=include_tables, favor_precision=favor_precision,
                               deduplicate=False, with_metadata=False)
    text = (text or "").strip()
    return text.replace(_ZWJ_MARK, "\u200d") if joined else text


class HtmlExtract(BaseFilter):
    """Documents with metadata["format"] == "html", or whose text is a whole HTML document,
    become their main text (trafilatura, `extract_html`); metadata["format"] becomes "text"
    and metadata["source_format"] "html". A page with no main text is dropped ("no_text");
    one that trafilatura fails on, too ("extract_error"). Other documents pass unchanged."""

    name = "🌐 HTML extract"

    def __init__(self, favor_precision: bool = True, include_tables: bool = True,
                 exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.favor_precision = favor_precision
        self.include_tables = include_tables

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if str(doc.metadata.get("format", "")).lower() != "html" and not looks_like_html(doc.text):
            return True
        try:
            text = extract_html(doc.text, self.favor_precision, self.include_tables)
        except Exception:  # one malformed page must not end the job
            return False, "extract_error"
        if not text:
            return False, "no_text"
        self.stat_update("html_extracted")
        doc.text = text
        doc.metadata["format"] = "text"
        doc.metadata["source_format"] = "html"
        return True


# -------------------------------------------------------------------------------- Normalize


@functools.cache
def _ftfy_config():
    import ftfy

    # ftfy's defaults would turn full-width （），。！？ and ＡＢＣ into ASCII
    # (fix_character_width) and “curly” quotes into straight ones (uncurl_quotes): both are
    # how Chinese is written, so both are off. NFC, not NFKC, for the same reason.
    return ftfy.TextFixerConfig(fix_character_width=False, uncurl_quotes=False,
                                normalization="NFC", explain=False)


# C0/C1 controls except tab and newline; invisible format characters (zero-width space, word
# joiner, BOM, soft hyphen, bidirectional overrides). ZWJ and variation selectors stay: emoji
# sequences like 👩‍💻 and ❤️ are built from them.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b\u200e\u200f\u2060\ufeff\u00ad"
                      "\u202a-\u202e\u2066-\u2069]")
_INNER_SPACE = re.compile(r"(?<=\S)[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]{2,}")
_BLANK_LINES = re.compile(r"\n{3,}")


def normalize_text(text: str) -> str:
    """Repair mojibake and bad escapes (ftfy, keeping CJK full-width punctuation), NFC,
    strip control and invisible format characters, collapse runs of spaces inside a line
    (indentation stays) and of blank lines (to one), strip trailing spaces."""
    import ftfy

    text = ftfy.fix_text(text.replace("\r\n", "\n"), config=_ftfy_config())
    text = _CONTROL.sub("", text)
    lines = [_INNER_SPACE.sub(" ", line).rstrip() for line in text.split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip("\n")


class Normalize(BaseFormatter):
    """`normalize_text` on every document."""

    name = "🧽 Normalize"

    def format(self, text: str) -> str:
        return normalize_text(text)


# --------------------------------------------------------------------------- LanguageScript


class LanguageScript(BaseFilter):
    """Sets metadata["lang"] ("zh", "en", "other"; `detect_lang`) and, for Chinese,
    metadata["script"] ("Hant", "Hans", "mixed"; `han_script`).

    convert: an OpenCC conversion for Chinese documents ("s2t", "t2s", "s2tw", "tw2s", …);
        a document already in the target script is left alone. s2t writes OpenCC's standard
        Traditional forms (裏, 喫), s2tw Taiwan's (裡, 吃), s2twp Taiwan's words as well (軟體). A converted document gets
        metadata["converted"] = the conversion; "script" stays what the source was.
    keep: languages to keep (e.g. ["zh", "en"]); others are dropped as "lang_<x>".
    """

    name = "🈶 Language & script"

    def __init__(self, convert: str | None = None, keep: list[str] | None = None,
                 exclusion_writer=None):
        super().__init__(exclusion_writer)
        if convert is not None:
            _opencc(convert)  # fail now on a bad name, not inside a worker
        bad = [x for x in keep or () if x not in LANGS]
        if bad:
            raise UserError(f"keep={bad}: languages are {', '.join(LANGS)}")
        self.convert = convert
        self.keep = None if keep is None else set(keep)
        # A conversion across scripts (s2t, tw2s, …) skips documents already in its target
        # script; one within a script (t2tw, hk2t) applies to every Chinese document.
        source, _, target = (convert or "").partition("2")
        crossing = (source == "s") != target.startswith("s")
        self.target = None if not convert or not crossing else "Hans" if target.startswith("s") else "Hant"

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        lang = detect_lang(doc.text)
        doc.metadata["lang"] = lang
        self.stat_update(f"lang_{lang}")
        if self.keep is not None and lang not in self.keep:
            return False, f"lang_{lang}"
        if lang != "zh":
            return True
        script, _, _ = han_script(doc.text)
        doc.metadata["script"] = script
        self.stat_update(f"script_{script}")
        if self.convert and script != self.target:  # target None: always
            converted = _opencc(self.convert).convert(doc.text)
            if converted != doc.text:
                doc.text = converted
                doc.metadata["converted"] = self.convert
                self.stat_update("converted")
        return True


# ----------------------------------------------------------------------------------- words


@functools.cache
def _jieba():
    import jieba

    jieba.setLogLevel(60)  # no "Building prefix dict…" on every worker
    jieba.initialize()
    return jieba


_HAN_RUN = re.compile(r"([\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]+)")
# Chinese punctuation (full-width, CJK quotes and brackets, …, —) is written with no space
# after it, where English puts one: it ends a word as a comma and a space would.
_CJK_PUNCT_RUN = re.compile("([\u3000-\u303f\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65"
                            "\u2014\u2026\u2018\u2019\u201c\u201d\u00b7]+)")


@functools.lru_cache(maxsize=4)  # the quality and repetition steps ask for the same text in turn
def _zh_words(text: str) -> tuple[str, ...]:
    words: list[str] = []
    for chunk in text.split():
        start = len(words)
        for piece in (p for part in _CJK_PUNCT_RUN.split(chunk) for p in _HAN_RUN.split(part)):
            if not piece:
                continue
            if _HAN_RUN.fullmatch(piece):
                words += _jieba().lcut(piece, HMM=True)
            elif _is_symbol(piece) and len(words) > start:
                words[-1] += piece  # attached punctuation belongs to its word: "年，" like "year,"
            else:
                words.append(piece)  # "GPT-4", "2024", "https://…" whole, as whitespace splits them
        if len(words) > start + 1 and _is_symbol(words[start]):
            words[start + 1] = words[start] + words[start + 1]  # a chunk's opening 「 or （
            del words[start]
    return tuple(words)


def words_of(text: str, lang: str) -> list[str]:
    """Words as the quality rules count them: Gopher's whitespace-separated tokens, where
    punctuation is part of the word it touches ("year," is one word). Chinese has no spaces,
    so its Han runs are cut into jieba words, and a punctuation mark written against a word
    joins it ("年，" like "year,"); runs of Latin letters, digits and symbols stay whole, as
    whitespace would leave them ("GPT-4", "3,200", a URL). A mark standing alone between
    spaces ("|", "-", "#") is a word of symbols, as in English.

    (jieba alone makes every "，" and "。" a word, as FineWeb-2's tokenizer does: then a
    Chinese page's alpha-word share and line rules count one word in five as "not a word",
    and a number like 3,200 as three words; see bench/bench_quality_rules.py.)"""
    if lang == "zh":
        return list(_zh_words(text))
    return text.split()


# Symbols and punctuation, ASCII and CJK, for "is this word only symbols?".
_PUNCT = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~¡§«»¶·¿–—‘’‚“”„†‡•…‰′″‹›€"
                   "、。〃〈〉《》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰・﹏！＂＃＄％＆＇（）＊＋，－．／："
                   "；＜＝＞？＠［＼］＾＿｀｛｜｝～｟｠｡｢｣､･￥│─━■□▪▫◆◇○●◎★☆►▶➤✓✔")


_PUNCT_STR = "".join(sorted(_PUNCT))


def _is_symbol(word: str) -> bool:
    return all(c in _PUNCT or unicodedata.category(c)[0] in "PS" for c in word)


# ----------------------------------------------------------------------------- QualityFilter

GOPHER_STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
# FineWeb-2 configs/cmn_Hani.yml (huggingface/fineweb-2, commit 05e6729), then 与 后 于: the
# Simplified forms of its 與 後 於, so both scripts are held to the same list.
ZH_STOP_WORDS = ("的", "年", "在", "月", "是", "和", "日", "了", "於", "·", "為", "有", "被", "人",
                 "中", "为", "他", "與", "後", "也", "而", "由", "与", "后", "于")
BULLETS = tuple("•‣⁃◦●○■□◆◇▪▫►▶➤✓✔-*·・–—")
ELLIPSES = ("...", "…", "。。。")
# Sentence ends (C4 / FineWeb), with the CJK ones: 。！？… and closing quotes 」』.
TERMINAL = (".", "!", "?", '"', "'", "”", "’", "…", "。", "！", "？", "｡", "．", "」", "』")


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
# and policy/cookie lines, in English and Chinese.
_BOILERPLATE = re.compile(
    r"(?:enable|turn on|activate|allow)\s+javascript|javascript\s+(?:is\s+)?(?:disabled|required|"
    r"must be enabled|is not enabled|not enabled)|requires?\s+javascript|"
    r"(?:啟用|启用|開啟|开启|打開|打开|允許|允许|需要|支援|支持)\s*javascript|"
    r"(?:this (?:site|website) uses|we use|use of|uses?) cookies|cookie (?:policy|settings|preferences)|"
    r"accept (?:all )?cookies|使用\s*cookies?|cookies?\s*(?:政策|設定|设置|聲明|声明)|"
    r"privacy policy|terms of (?:use|service)|隱私權?政策|隐私权?政策|隱私聲明|隐私声明|"
    r"使用條款|使用条款|服務條款|服务条款")
BOILERPLATE_MAX_LEN = 200  # a longer line is content that happens to mention a policy


def strip_boilerplate(text: str) -> tuple[str, int]:
    """(text without C4-style boilerplate lines, how many were removed)."""
    kept, removed = [], 0
    for line in text.split("\n"):
        if len(line) <= BOILERPLATE_MAX_LEN and _BOILERPLATE.search(line.casefold()):
            removed += 1
        else:
            kept.append(line)
    return ("\n".join(kept), removed) if removed else (text, 0)


# A Markdown heading's #s are structure, not hashtags; an ellipsis is one mark however it is
# typed: Chinese writes it doubled (……), the web as ... or 。。。
_HEADING_HASHES = re.compile(r"^[ \t]{0,3}#{1,6}(?=[ \t])", re.M)
_ELLIPSIS_RUN = re.compile(r"(?:\.{3,}|…+|。{3,})")
# A finished sentence inside a line: the Chinese full stop, ! and ? marks have no other use
# (no decimals, abbreviations or URLs), so a line holding one is prose, not a menu item.
_CJK_SENTENCE_END = re.compile(r"[。！？][」』”’）)]*")


# Markdown's markup: list markers, heading #s and quote >s at a line's start; a table's
# |---| row.
_MARKUP = re.compile(r"^[ \t]*(?:>[ \t]*)*(?:[-*+•][ \t]+|\d{1,3}[.)][ \t]+|#{1,6}[ \t]+)?|"
                     r"^[ \t]*\|?(?:[ \t]*:?-{3,}:?[ \t]*\|)+[ \t]*(?::?-+:?)?[ \t]*$", re.M)


def strip_markup(text: str) -> str:
    """`text` without Markdown's markup, which is layout and not words: list markers,
    heading and quote marks, table rows' pipes (the bullet rule still sees the lines as
    written; a pipe between words elsewhere, as in a menu, stays a word)."""
    text = _MARKUP.sub("", text)
    if "|" not in text:
        return text
    return "\n".join(x.replace("|", " ") if x.lstrip().startswith("|") else x for x in text.split("\n"))


def symbol_count(text: str) -> int:
    """Gopher's symbols: "#" (hashtags, not Markdown heading marks) and ellipses."""
    return _HEADING_HASHES.sub("", text).count("#") + len(_ELLIPSIS_RUN.findall(text))


def ends_sentence(line: str) -> bool:
    """FineWeb's "the line ends a sentence"; a line holding a finished Chinese sentence
    counts too (Chinese web text puts a whole paragraph on one line, and a page cut
    mid-sentence still has its earlier sentences)."""
    return line.rstrip().endswith(TERMINAL) or bool(_CJK_SENTENCE_END.search(line))


def is_list_item(line: str) -> bool:
    """Gopher's "starts with a bullet", for a line that is an item and not a sentence: a
    bullet that holds a finished sentence is a note's point, not a menu or a link list."""
    return line.lstrip().startswith(BULLETS) and not ends_sentence(line)


def quality_reason(text: str, lang: str, t: QualityThresholds, drop_curly_brackets: bool = False) -> str | None:
    """Why `text` fails `t` (a short snake_case reason), or None when it passes."""
    folded = text.casefold()
    if "lorem ipsum" in folded:  # C4: placeholder pages
        return "lorem_ipsum"
    if drop_curly_brackets and "{" in text:  # C4: code, not prose
        return "curly_bracket"
    lines = [x for x in text.split("\n") if x.strip()]
    if not lines:
        return "empty"
    words = words_of(strip_markup(text), lang)
    n_words = max(1, len(words))
    content = [w for w in words if not _is_symbol(w)]
    if t.min_words is not None and len(content) < t.min_words:
        return "too_short"
    if t.max_words is not None and len(content) > t.max_words:
        return "too_long"
    if content and (t.min_avg_word_length is not None or t.max_avg_word_length is not None):
        # English words keep their attached punctuation when split on spaces; don't count it.
        mean = sum(len(w.strip(_PUNCT_STR)) or len(w) for w in content) / len(content)
        if t.min_avg_word_length is not None and mean < t.min_avg_word_length:
            return "avg_word_length"
        if t.max_avg_word_length is not None and mean > t.max_avg_word_length:
            return "avg_word_length"
    if t.max_symbol_word_ratio is not None:
        if symbol_count(text) / n_words > t.max_symbol_word_ratio:
            return "symbol_ratio"
    if t.max_bullet_lines is not None:
        if sum(map(is_list_item, lines)) / len(lines) > t.max_bullet_lines:
            return "bullet_lines"
    if t.max_ellipsis_lines is not None:
        if sum(x.rstrip().endswith(ELLIPSES) for x in lines) / len(lines) > t.max_ellipsis_lines:
            return "ellipsis_lines"
    if t.min_alpha_words is not None:
        if sum(any(c.isalpha() for c in w) for w in words) / n_words < t.min_alpha_words:
            return "alpha_words"
    if t.min_stop_words is not None:
        stop = set(t.stop_words)
        if sum(w.strip(_PUNCT_STR).lower() in stop or w in stop for w in words) < t.min_stop_words:
            return "stop_words"
    if t.min_punct_lines is not None:
        if sum(map(ends_sentence, lines)) / len(lines) < t.min_punct_lines:
            return "line_punct"
    if t.max_newline_ratio is not None and text.count("\n") / n_words > t.max_newline_ratio:
        return "newline_ratio"
    return None


def _merged(defaults: dict, overrides: dict | None, cls) -> dict:
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


def _lang_of(doc: Document) -> str:
    lang = doc.metadata.get("lang")
    if lang not in LANGS:
        lang = doc.metadata["lang"] = detect_lang(doc.text)
    return lang


class QualityFilter(BaseFilter):
    """Gopher, C4 and FineWeb heuristics, with per-language thresholds.

    First C4's boilerplate lines (turn-on-JavaScript, cookie and policy notices; see
    `strip_boilerplate`) are removed from the text (stat "boilerplate_lines"), then
    `quality_reason` decides, with the thresholds of the document's metadata["lang"] (set by
    LanguageScript; detected here when missing).

    lang_thresholds: per language ("zh", "en", "other"), a `QualityThresholds` or a dict of
        its fields to change, e.g. {"zh": {"min_words": 20}}; see QUALITY_THRESHOLDS for the
        defaults and where each number comes from.
    drop_curly_brackets: drop documents with "{" (C4 did; it drops code too, so off).
    preset: the thresholds lang_thresholds change: "web" or "literature" (`preset_thresholds`).
    """

    name = "🥇 Quality"

    def __init__(self, lang_thresholds: dict | None = None, remove_boilerplate: bool = True,
                 drop_curly_brackets: bool = False, exclusion_writer=None, preset: str = "web"):
        super().__init__(exclusion_writer)
        self.thresholds = _merged(preset_thresholds(preset)[0], lang_thresholds, QualityThresholds)
        self.remove_boilerplate = remove_boilerplate
        self.drop_curly_brackets = drop_curly_brackets

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        lang = _lang_of(doc)
        if self.remove_boilerplate:
            doc.text, removed = strip_boilerplate(doc.text)
            if removed:
                self.stat_update("boilerplate_lines", value=removed)
        reason = quality_reason(doc.text, lang, self.thresholds[lang], self.drop_curly_brackets)
        return True if reason is None else (False, reason)


# -------------------------------------------------------------------------- RepetitionFilter


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
    return (_merged(QUALITY_THRESHOLDS, LITERATURE_THRESHOLDS, QualityThresholds),
            _merged(REPETITION_THRESHOLDS, LITERATURE_REPETITION, RepetitionThresholds))

_EN_WORD = re.compile(r"\w+")


def _units(text: str, lang: str) -> list[str]:
    """What n-grams are made of: lower-cased words without their punctuation; for Chinese,
    `words_of`'s (jieba words for Han text)."""
    if lang == "zh":
        return [u for w in words_of(text, "zh") if (u := w.strip(_PUNCT_STR).casefold())]
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
        self.thresholds = _merged(preset_thresholds(preset)[1], lang_thresholds, RepetitionThresholds)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        lang = _lang_of(doc)
        reason = repetition_reason(doc.text, lang, self.thresholds[lang])
        return True if reason is None else (False, reason)


# ----------------------------------------------------------------------------- HarmfulFilter

LEXICON_DIR = Path(__file__).parent / "lexicon"
CATEGORIES = ("sexual", "violence", "hate", "self_harm")
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
    "blow-job", "blowjob") and a final * any word ending."""
    folded = _fold(term)
    if _HAN.search(folded):
        return re.escape(folded)
    stem, wild = (folded[:-1], True) if folded.endswith("*") else (folded, False)
    parts = [re.escape(p) for p in re.split(r"[\s\-]+", stem) if p]
    body = r"[\s\-]*".join(parts) + (r"[a-z0-9]*" if wild else "")
    return r"(?<![a-z0-9])" + body + r"(?![a-z0-9])"


def _variants(term: str) -> set[str]:
    """A Chinese term in its own script and OpenCC's other ones (t2s, s2t, s2tw)."""
    if not _HAN.search(term):
        return {term}
    return {term} | {_opencc(c).convert(term) for c in ("t2s", "s2t", "s2tw")}


def _alternation(terms: Iterable[str]) -> re.Pattern | None:
    pats = sorted({_term_pattern(v) for t in terms for v in _variants(t)}, key=len, reverse=True)
    return re.compile("|".join(pats)) if pats else None


@dataclass
class Lexicon:
    """Harmful-term lists by category and an allow-list (see lexicon/*.txt).

    Matching runs on NFKC-folded, lower-cased text: English terms as whole words, Chinese
    terms as substrings in either script. A hit that overlaps an allow-list phrase ("breast
    cancer", "出口交易", "殺死細菌") is not a hit.
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
                for v in sorted(_variants(t)) if not t.endswith("*") else ():
                    exact.setdefault(_key(v), t)
        self._prefix = {c: [(_key(t[:-1]), t) for t in ts if t.endswith("*")]
                        for c, ts in self.terms.items()}

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
        return matched

    def hits(self, text: str) -> dict[str, Counter]:
        """{category: Counter(term -> occurrences)} for the categories with any hit; terms
        are named as written in the lexicon file."""
        folded = _fold(text)
        masks = [(m.start(), m.end()) for m in self._allow.finditer(folded)] if self._allow else []
        starts = [s for s, _ in masks]
        out = {}
        for cat, pattern in self._patterns.items():
            if pattern is None:
                continue
            found = Counter()
            for m in pattern.finditer(folded):
                # Allow-list spans don't overlap one another, so of those starting before the
                # hit ends, the last reaches furthest.
                i = bisect_left(starts, m.end())
                if i and masks[i - 1][1] > m.start():
                    continue  # overlaps an allow-listed phrase
                found[self._canonical(cat, m.group())] += 1
            if found:
                out[cat] = found
        return out


def text_units(text: str) -> int:
    """Han characters + other words: the denominator of hit density."""
    return len(_HAN.findall(text)) + len(re.findall(r"[^\W\d_\u3400-\u9fff]+", _HAN.sub(" ", text)))


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

    categories: which categories to apply (default: all files in the lexicon directory).
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
            from jielong.classifier import load_classifier

            clf, tok = load_classifier(self.classifier)
            safe = [i for i, name in enumerate(clf.labels) if name.strip().lower() in SAFE_LABELS]
            if len(safe) != 1 or len(clf.labels) < 2:
                raise UserError(f"{self.classifier}: labels {clf.labels}: exactly one must name the "
                                f"safe class ({', '.join(sorted(SAFE_LABELS))})")
            self._model = (clf, tok, safe[0])
        return self._model

    def scores(self, texts: list[str]) -> list[tuple[str, float]]:
        """(likeliest harmful label, probability of any harmful label) per text."""
        from jielong.classifier import encode_texts, predict_logits

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


# --------------------------------------------------------------------------------- PiiRedact


def redact_document(doc: Document, kinds: Sequence[str] | None = None) -> dict[str, int]:
    """Redacts `doc` in place: its text, and its id and metadata (a JSONL record's other
    fields, a WARC record's URL) where they hold any; returns {kind: count} of the text's."""
    doc.text, counts = pii.redact(doc.text, kinds)
    if doc.id and isinstance(doc.id, str):
        doc.id = pii.redact(doc.id, kinds)[0]
    elsewhere = Counter()
    doc.metadata = pii.redact_all(doc.metadata, kinds, elsewhere)
    if elsewhere:
        doc.metadata["pii_metadata"] = dict(elsewhere)
    return counts


class PiiRedact(PipelineStep):
    """Replaces personal data and credentials with typed placeholders (`jielong.prep.pii`):
    <EMAIL>, <PHONE>, <TW_ID>, <CN_ID>, <CREDIT_CARD>, <IP>, <PRIVATE_KEY>, <HF_TOKEN>,
    <OPENAI_KEY>, <ANTHROPIC_KEY>, <AWS_KEY_ID>, <AWS_SECRET>, <GITHUB_TOKEN>. Counts each
    kind in metadata["pii"] (only on documents with any) and in the stats ("pii_<kind>").
    The id and metadata are redacted too (`redact_document`; their finds are counted in
    metadata["pii_metadata"]). `jielong data clean` also redacts every document a filter
    drops before writing it aside, since most filters run before this step.

    kinds: which kinds to redact (default: all, `pii.KINDS`).
    """

    name = "🕵️ PII redact"
    type = "✂️ - FORMAT"

    def __init__(self, kinds: list[str] | None = None):
        super().__init__()
        if kinds is not None:
            unknown = sorted(set(kinds) - set(pii.KINDS))
            if unknown:
                raise UserError(f"kinds {unknown}: unknown; known: {', '.join(pii.KINDS)}")
        self.kinds = None if kinds is None else tuple(kinds)

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            self.stat_update("total")
            with self.track_time():
                counts = redact_document(doc, self.kinds)
            if counts:
                doc.metadata["pii"] = counts
                for kind, n in counts.items():
                    self.stat_update(f"pii_{kind}", value=n)
            yield doc
