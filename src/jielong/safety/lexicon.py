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

Scores are a plain function of the evidence: 1 - 0.4^n for n distinct terms of a category
(one term 0.6, two 0.84, three 0.94), so the policy's threshold reads as "how many terms".
private_data comes from prep's PII finders (`jielong.prep.pii.find_pii`: e-mail, phone
numbers, Taiwan and mainland IDs, card numbers, keys and tokens), score 1.0 for any finding,
its evidence the placeholders (<EMAIL>), never the data itself.
"""

from __future__ import annotations

from pathlib import Path

from jielong.prep.harmful import Lexicon
from jielong.prep.language import converter
from jielong.prep.pii import PLACEHOLDERS, find_pii

BASE = 0.4  # score = 1 - BASE ** distinct terms


def lexicon_score(distinct_terms: int) -> float:
    return round(1 - BASE ** distinct_terms, 4) if distinct_terms else 0.0


class LexiconDetector:
    """Per category, (score, evidence) from the lexicon and, for private_data, the PII finders.

    directory: another lexicon directory in prep's layout (CATEGORY.txt, allow.txt).
    pii: whether to report private_data.
    """

    name = "lexicon"

    def __init__(self, directory: str | Path | None = None, pii: bool = True):
        self.lexicon = Lexicon.load(directory)
        self.pii = pii
        self.t2s = converter("t2s")

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
        out = {cat: (lexicon_score(len(found)), sorted(found)) for cat, found in hits.items()}
        if self.pii:
            kinds = sorted({f.kind for f in find_pii(text)})
            if kinds:
                out["private_data"] = (1.0, [PLACEHOLDERS[k] for k in kinds])
        return out
