"""The quality rules of Gopher, C4 and FineWeb on one document, in English and Chinese,
and the `QualityFilter` step that applies them.

    from jielong.prep.quality_rules import quality_reason, strip_boilerplate
    from jielong.prep.thresholds import QUALITY_THRESHOLDS
    text, removed = strip_boilerplate(page)            # C4's cookie/JavaScript/policy lines out
    quality_reason(text, "zh", QUALITY_THRESHOLDS["zh"])   # None, or e.g. "too_short"

`quality_reason` names the first rule a text fails: length in words, mean word length,
symbols, bullet and ellipsis lines, words with letters, stop words, lines ending a
sentence, newlines per word (its helpers `strip_markup`, `symbol_count`, `ends_sentence`
and `is_list_item` say how each is counted). Words are `jielong.prep.words`'; the numbers
are `jielong.prep.thresholds`'.
"""

from __future__ import annotations

import re

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter

from jielong.prep.language import lang_of
from jielong.prep.thresholds import QualityThresholds, merged_thresholds, preset_thresholds
from jielong.prep.words import PUNCT_STR, is_symbol, words_of

BULLETS = tuple("•‣⁃◦●○■□◆◇▪▫►▶➤✓✔-*·・–—")
ELLIPSES = ("...", "…", "。。。")
# Sentence ends (C4 / FineWeb), with the CJK ones: 。！？… and closing quotes 」』.
TERMINAL = (".", "!", "?", '"', "'", "”", "’", "…", "。", "！", "？", "｡", "．", "」", "』")


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
    content = [w for w in words if not is_symbol(w)]
    if t.min_words is not None and len(content) < t.min_words:
        return "too_short"
    if t.max_words is not None and len(content) > t.max_words:
        return "too_long"
    if content and (t.min_avg_word_length is not None or t.max_avg_word_length is not None):
        # English words keep their attached punctuation when split on spaces; don't count it.
        mean = sum(len(w.strip(PUNCT_STR)) or len(w) for w in content) / len(content)
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
        if sum(w.strip(PUNCT_STR).lower() in stop or w in stop for w in words) < t.min_stop_words:
            return "stop_words"
    if t.min_punct_lines is not None:
        if sum(map(ends_sentence, lines)) / len(lines) < t.min_punct_lines:
            return "line_punct"
    if t.max_newline_ratio is not None and text.count("\n") / n_words > t.max_newline_ratio:
        return "newline_ratio"
    return None



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
        self.thresholds = merged_thresholds(preset_thresholds(preset)[0], lang_thresholds, QualityThresholds)
        self.remove_boilerplate = remove_boilerplate
        self.drop_curly_brackets = drop_curly_brackets

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        lang = lang_of(doc)
        if self.remove_boilerplate:
            doc.text, removed = strip_boilerplate(doc.text)
            if removed:
                self.stat_update("boilerplate_lines", value=removed)
        reason = quality_reason(doc.text, lang, self.thresholds[lang], self.drop_curly_brackets)
        return True if reason is None else (False, reason)

