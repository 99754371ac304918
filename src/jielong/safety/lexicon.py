"""A transparent lexicon detector for the safety categories, over prep's harmful-text lexicon.

    from jielong.safety.lexicon import LexiconDetector
    LexiconDetector().detect("教我怎麼製作炸彈")   # {"violence": (0.6, ["製作炸彈"])}

One source of truth: the term lists are prep's (src/jielong/prep/lexicon/*.txt: self_harm,
violence, sexual, hate, plus illegal and minors, which the serving rails use), with the same
allow-list, loaded by `jielong.prep.harmful.Lexicon`; a team extends those files (or points
`directory` at its own copy). Matching runs on NFKC-folded text (full-width letters and
digits become half-width), each Chinese term in its Traditional and Simplified forms
(OpenCC), and also on the text converted to Simplified, so a mixed-script message is caught.
A hit that overlaps an allow-listed phrase (乳癌, 殺菌, "kill a process", "suicide hotline")
does not count.

minors also has a rule, since most such requests name no fixed phrase ("a sex story about a
13-year-old", 描述一個小學生的性感身材): a word for a child (minors_rule/minor.txt: 未成年,
國中生, 小學生, teen, kids, schoolgirl ...) or an age under 18 (12歲, 十岁, "13-year-old",
"aged 15": `minor_ages`) in the same sentence and at most MINORS_GAP units (Han
characters + words, prep's `text_units`) from a sexual word (minors_rule/sexual.txt
and every term of prep's sexual.txt) or a grooming verb (minors_rule/grooming.txt: 引誘, 哄騙,
"groom", "lure") makes the text "minors", its evidence "MINOR+WORD" ("12歲+發生關係"). The rule stands down when the text has a word of protection, education,
reporting or the law (minors_rule/protective.txt: 性教育, 跡象, 判刑, "sexual abuse", "signs",
"report") — the category's definition leaves those out (minors.txt) — so a request dressed in
them passes: a floor, like every rule here. Each pair found counts as a minors term.

Scores are a plain function of the evidence: 1 - 0.4^n for n distinct terms of a category
(one term 0.6, two 0.84, three 0.94), so the policy's threshold reads as "how many terms".
private_data comes from prep's PII finders (`jielong.prep.pii.find_pii`: e-mail, phone
numbers, Taiwan and mainland IDs, card numbers, keys and tokens), score 1.0 for any finding,
its evidence the placeholders (<EMAIL>), never the data itself.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from pathlib import Path

from jielong.prep.harmful import Lexicon, read_terms, text_units
from jielong.prep.language import converter
from jielong.prep.pii import PLACEHOLDERS, find_pii

BASE = 0.4  # score = 1 - BASE ** distinct terms
MINORS_RULE = Path(__file__).parent / "minors_rule"
MINORS_GAP = 12  # Han characters + words between a minor word and a sexual word, at most
_SENTENCE_END = re.compile(r"[。!?！？;；\n]")
_ZH_DIGITS = {c: i for i, c in enumerate("零一二三四五六七八九")} | {"兩": 2, "两": 2}
_EN_NUMBERS = ("one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
               "fifteen sixteen seventeen").split()
_AGES = re.compile(
    r"(?<![\d.])(?P<d>\d{1,2})\s*(?:周|週)?[歲岁]"
    r"|(?<![零一二三四五六七八九十百千萬万兩两\d])(?P<z>十[一二三四五六七]?|[一二三四五六七八九兩两])\s*(?:周|週)?[歲岁]"
    r"|(?<![\w.])(?P<e>\d{1,2}|" + "|".join(_EN_NUMBERS) + r")[\s-]*(?:years?|yrs?)[\s-]*old\b"
    r"|\bage[ds]?\s+(?P<a>\d{1,2})\b|(?<![\w.])(?P<y>\d{1,2})\s*yo\b")


def _fold_like_lexicon(text: str) -> str:
    """The text as prep's Lexicon matches it (NFKC, case folded), so offsets line up."""
    return unicodedata.normalize("NFKC", text).casefold()


def near(gap: str) -> bool:
    """Whether two words this far apart go together: one sentence, at most MINORS_GAP units."""
    return not _SENTENCE_END.search(gap) and text_units(gap) <= MINORS_GAP


def minor_ages(folded: str) -> list[tuple[int, int]]:
    """Spans of ages under 18 in lower-cased text: 12歲, 十岁, 14 周岁, "13-year-old",
    "thirteen years old", "aged 15", "16yo"."""
    out = []
    for m in _AGES.finditer(folded):
        d, z, e = m.group("d") or m.group("a") or m.group("y"), m.group("z"), m.group("e")
        if z:
            age = 10 + (_ZH_DIGITS[z[1]] if len(z) > 1 else 0) if z[0] == "十" else _ZH_DIGITS[z]
        elif e:
            age = int(e) if e.isdigit() else _EN_NUMBERS.index(e) + 1
        else:
            age = int(d)
        if 0 < age < 18:
            out.append((m.start(), m.end()))
    return out


def lexicon_score(distinct_terms: int) -> float:
    return round(1 - BASE ** distinct_terms, 4) if distinct_terms else 0.0


class LexiconDetector:
    """Per category, (score, evidence) from the lexicon and, for private_data, the PII finders.

    directory: another lexicon directory in prep's layout (CATEGORY.txt, allow.txt).
    pii: whether to report private_data.
    minors_rule: the directory of the minor + sexual rule's word lists (minor.txt, sexual.txt,
        grooming.txt, protective.txt; default the built-in one), or None for no rule. It applies when the
        lexicon has a minors category.
    """

    name = "lexicon"

    def __init__(self, directory: str | Path | None = None, pii: bool = True,
                 minors_rule: str | Path | None = MINORS_RULE):
        self.lexicon = Lexicon.load(directory)
        self.pii = pii
        self.t2s = converter("t2s")
        self.minors_rule = None
        if minors_rule is not None and "minors" in self.lexicon.terms:
            d = Path(minors_rule)
            words = {name: read_terms(d / f"{name}.txt")
                     for name in ("minor", "sexual", "grooming", "protective")}
            words["sexual"] += self.lexicon.terms.get("sexual", [])
            self.minors_rule = Lexicon(words, self.lexicon.allow)

    def minors(self, text: str) -> list[str]:
        """The minor + sexual rule's evidence ("12歲+發生關係"), or [] (see the module docstring)."""
        if self.minors_rule is None:
            return []
        found = self.minors_rule.find(text)
        if any(cat == "protective" for cat, *_ in found):
            return []
        folded = _fold_like_lexicon(text)
        minor = [(t, a, b) for cat, t, a, b in found if cat == "minor"]
        minor += [(folded[a:b].strip(), a, b) for a, b in minor_ages(folded)]
        sexual = [(t, a, b) for cat, t, a, b in found if cat in ("sexual", "grooming")]
        return sorted({f"{m}+{x}" for m, ma, mb in minor for x, sa, sb in sexual
                       if near(folded[min(mb, sb):max(ma, sa)])})

    @property
    def categories(self) -> list[str]:
        return list(self.lexicon.terms) + (["private_data"] if self.pii else [])

    def detect(self, text: str) -> dict[str, tuple[float, list[str]]]:
        """{category: (score, evidence terms as written in the lexicon)} for the categories hit."""
        hits = self.lexicon.hits(text)
        simplified = self.t2s.convert(text)
        if simplified != text:
            for cat, found in self.lexicon.hits(simplified).items():
                hits.setdefault(cat, found)
        rule = self.minors(text) or (self.minors(simplified) if simplified != text else [])
        if rule:
            hits.setdefault("minors", Counter()).update(rule)
        out = {cat: (lexicon_score(len(found)), sorted(found)) for cat, found in hits.items()}
        if self.pii:
            kinds = sorted({f.kind for f in find_pii(text)})
            if kinds:
                out["private_data"] = (1.0, [PLACEHOLDERS[k] for k in kinds])
        return out
