"""Reading the answer out of a generated reply: the letter of a multiple-choice answer, the
class a reply names, and the short answer on its first line.

    choice_letter("答案：B。因为……")   # "B"
    choice_letter("The answer is (C).")  # "C"
    pick_label("我覺得是負面的評論", ["正面", "負面"])   # "負面"

A reasoning model's `<think>…</think>` is dropped first (an unclosed one, and all after it,
too: the reply ran out of tokens while thinking). Full-width letters and punctuation are
read as their ASCII forms (Unicode NFKC: "Ｂ" → "B", "（" → "(", "：" → ":").

`choice_letter` tries, in order, patterns of the kind OpenCompass's `first_option_postprocess`
(opencompass/utils/text_postprocessors.py) tries: an explicit answer ("答案是B", "答案：B",
"正確答案為 (B)", "The answer is B", "Answer: B", "\\boxed{B}"), a reply that starts with the
letter ("B", "B.", "(B) …"), a letter in brackets anywhere, and last the first letter that
stands alone (not inside a word, so "Apple" gives no A). None when no pattern finds one of the choices'
letters: the caller counts it as wrong and reports how often (`no_answer`).

`pick_label`: the label the reply names first (the longest when two start at the same place,
so "非常正面" beats "正面"), else the label closest to the reply's first line by difflib's
ratio of matching characters; None when no label shares a character with it.
"""

from __future__ import annotations

import difflib
import re
import unicodedata

LETTERS = "ABCDEFGHIJ"
THINKING = re.compile(r"<think>.*?(</think>|$)", re.S)
# A label ahead of the answer on its line: "答案：", "譯文：", "Answer:" …, dropped.
ANSWER_LABEL = re.compile(r"^\s*(?:答案|回答|譯文|译文|翻譯|翻译|摘要|類別|类别|分類|分类|"
                          r"answer|translation|summary|category|label)\s*[:：]\s*", re.I)


def strip_thinking(reply: str) -> str:
    return THINKING.sub("", reply).strip()


def first_line(reply: str) -> str:
    """The reply's first non-blank line, thinking dropped, its "答案：" / "Answer:" label off."""
    lines = (ANSWER_LABEL.sub("", x, count=1).strip() for x in strip_thinking(reply).splitlines())
    return next((x for x in lines if x), "")  # "答案：" alone on a line: the answer is on the next


def whole_reply(reply: str) -> str:
    """The reply on one line (a translation or summary), thinking and a leading label dropped."""
    return ANSWER_LABEL.sub("", " ".join(strip_thinking(reply).split()), count=1).strip()


def letter_patterns(letters: str) -> list[re.Pattern]:
    c = f"[{letters}]"
    alone = "(?![A-Za-z])"
    return [
        re.compile(rf"(?:正确答案|正確答案|答案|答)\s*(?:应该|應該)?\s*(?:是|为|為|选|選)?\s*:?\s*"
                   rf"(?:选项|選項)?\s*[(\[]?\s*({c}){alone}"),
        re.compile(rf"(?i:the\s+(?:correct\s+|right\s+|best\s+)?answer\s+is|answer\s*:)\s*"
                   rf"(?i:option\s+)?[(\[]?\s*({c}){alone}"),
        re.compile(rf"\\boxed\{{\s*({c})\s*\}}"),
        re.compile(rf"^\s*[(\[]?\s*({c}){alone}"),
        re.compile(rf"[(\[]\s*({c})\s*[)\]]"),
        re.compile(rf"(?<![A-Za-z])({c}){alone}"),
    ]


def choice_letter(reply: str, n_choices: int = 4) -> str | None:
    """The answer letter a reply gives among the first `n_choices` (A…), or None."""
    text = unicodedata.normalize("NFKC", strip_thinking(reply))
    for pattern in letter_patterns(LETTERS[:n_choices]):
        m = pattern.search(text)
        if m:
            return m.group(1)
    return None


def pick_label(reply: str, labels: list[str]) -> str | None:
    """The label a reply names (see the module docstring), or None."""
    text = unicodedata.normalize("NFKC", strip_thinking(reply)).lower()
    norm = [unicodedata.normalize("NFKC", x).lower() for x in labels]
    hits = [(text.find(x), -len(x), i) for i, x in enumerate(norm) if x and x in text]
    if hits:
        return labels[min(hits)[2]]
    line = unicodedata.normalize("NFKC", first_line(reply)).lower()
    scores = [difflib.SequenceMatcher(None, line, x, autojunk=False).ratio() for x in norm]
    best = max(range(len(labels)), key=lambda i: (scores[i], -i), default=None)
    return labels[best] if best is not None and scores[best] > 0 else None
