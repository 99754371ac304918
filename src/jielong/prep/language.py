"""Language and script of a text, by character classes and OpenCC's tables (no
language-ID model), and the `LanguageScript` step that records them on each document.

    from jielong.prep.language import detect_lang, han_script
    detect_lang("The cat sat on the mat and looked at the dog.")   # "en"
    han_script("這個軟體很好用")                                     # ("Hant", 4, 0)

`detect_lang` says "zh", "en" or "other"; `han_script` tells Traditional from Simplified
Chinese ("Hant", "Hans" or "mixed"). `LanguageScript` sets metadata["lang"] and, for
Chinese, metadata["script"], can convert script with OpenCC and can keep only some
languages. `HAN` (a Han character) and `converter` (OpenCC's, cached) are shared with the
other steps.
"""

from __future__ import annotations

import functools
import re

import opencc
from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter

from jielong.errors import UserError

LANGS = ("zh", "en", "other")
OPENCC_CONFIGS = ("s2t", "t2s", "s2tw", "tw2s", "s2twp", "tw2sp", "s2hk", "hk2s", "t2tw", "tw2t")


# A Han character: CJK Unified Ideographs, extension A, compatibility ideographs, planes 2-3.
HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]")
# Kana without ・ (U+30FB) and ー (U+30FC), which Chinese text uses too.
_KANA = re.compile(r"[\u3040-\u309f\u30a0-\u30fa\u30fd-\u30ff\u31f0-\u31ff]")
HANGUL = re.compile(r"[\uac00-\ud7af\u1100-\u11ff\u3130-\u318f]")
_LATIN_WORD = re.compile(r"[A-Za-z\u00c0-\u024f]+")

# The commonest English words: a Latin-script text is English when enough of its words are
# among them (about a quarter of running English text is; French or German text has few).
_EN_COMMON = frozenset("""the of and to a in is was that it for on with as be by at this are not
you i he she we they his her have had or from but an my me your will would what which so if no
do all their there were been has one who them him our can said thou thee thy shall""".split())


@functools.cache
def converter(config: str) -> opencc.OpenCC:
    """OpenCC's converter for `config` (s2t, t2s, s2tw, …), made once per process."""
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
    han = len(HAN.findall(text))
    kana = len(_KANA.findall(text))
    hangul = len(HANGUL.findall(text))
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
    if converter("t2s").convert(ch) != ch:
        return 1
    if converter("s2t").convert(ch) != ch:
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
    for ch in HAN.findall(text):
        t = _telling(ch)
        trad += t > 0
        simp += t < 0
    if trad and trad >= margin * simp:
        return "Hant", trad, simp
    if simp and simp >= margin * trad:
        return "Hans", trad, simp
    return "mixed", trad, simp



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
            converter(convert)  # fail now on a bad name, not inside a worker
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
            converted = converter(self.convert).convert(doc.text)
            if converted != doc.text:
                doc.text = converted
                doc.metadata["converted"] = self.convert
                self.stat_update("converted")
        return True



def lang_of(doc: Document) -> str:
    """metadata["lang"], detected (and set) when a document comes without one."""
    lang = doc.metadata.get("lang")
    if lang not in LANGS:
        lang = doc.metadata["lang"] = detect_lang(doc.text)
    return lang

