"""Words as the quality and repetition rules count them, in English and Chinese.

    from jielong.prep.words import words_of
    words_of("The year, 2024.", "en")     # ["The", "year,", "2024."]
    words_of("今年，我們去了台北。", "zh")   # jieba words, punctuation joined to its word

English words are Gopher's whitespace tokens. Chinese has no spaces: its Han runs are cut
into jieba words and a punctuation mark joins the word it touches, so both languages count
alike. `is_symbol` and `PUNCT` tell a word made only of punctuation or symbols.
"""

from __future__ import annotations

import functools
import re
import unicodedata

import jieba


@functools.cache
def _jieba():
    jieba.setLogLevel(60)  # no "Building prefix dict…" on every worker
    jieba.initialize()
    return jieba


_HAN_RUN = re.compile(r"([\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]+)")
# Chinese punctuation (full-width, CJK quotes and brackets, …, —) is written with no space
# after it, where English puts one: it ends a word as a comma and a space would.
_CJKPUNCT_RUN = re.compile("([\u3000-\u303f\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65"
                            "\u2014\u2026\u2018\u2019\u201c\u201d\u00b7]+)")


@functools.lru_cache(maxsize=4)  # the quality and repetition steps ask for the same text in turn
def _zh_words(text: str) -> tuple[str, ...]:
    words: list[str] = []
    for chunk in text.split():
        start = len(words)
        for piece in (p for part in _CJKPUNCT_RUN.split(chunk) for p in _HAN_RUN.split(part)):
            if not piece:
                continue
            if _HAN_RUN.fullmatch(piece):
                words += _jieba().lcut(piece, HMM=True)
            elif is_symbol(piece) and len(words) > start:
                words[-1] += piece  # attached punctuation belongs to its word: "年，" like "year,"
            else:
                words.append(piece)  # "GPT-4", "2024", "https://…" whole, as whitespace splits them
        if len(words) > start + 1 and is_symbol(words[start]):
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
PUNCT = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~¡§«»¶·¿–—‘’‚“”„†‡•…‰′″‹›€"
                  "、。〃〈〉《》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰・﹏！＂＃＄％＆＇（）＊＋，－．／："
                  "；＜＝＞？＠［＼］＾＿｀｛｜｝～｟｠｡｢｣､･￥│─━■□▪▫◆◇○●◎★☆►▶➤✓✔")

PUNCT_STR = "".join(sorted(PUNCT))  # the same, for str.strip


def is_symbol(word: str) -> bool:
    """True for a word made only of punctuation and symbols (ASCII, CJK or Unicode P*/S*)."""
    return all(c in PUNCT or unicodedata.category(c)[0] in "PS" for c in word)

