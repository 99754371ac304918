"""Question answering: SQuAD-style reading-comprehension files (DRCD, CMRC 2018) and their
scores, and the hallucination rate of closed-book answers.

    items = read_squad("cmrc2018-dev.json")          # [QAItem(id, question, context, answers…)]
    qa_scores(items, {"DEV_0_QUERY_0": "光荣和ω-force", …})   # EM and F1 as CMRC 2018 computes them

A SQuAD-style file is {"data": [{"title", "paragraphs": [{"context", "qas": [{"id",
"question", "answers": [{"text", "answer_start"}, …]}]}]}]}. A malformed one is a one-line
`UserError` naming the file and the place in it (e.g. data[3].paragraphs[0].qas[2]).

Closed-book QA asks without the passage; a model should then say it does not know rather
than make an answer up. `closed_book` sorts each reply into correct (it contains a gold
answer, case- and space-insensitively), refused (it contains one of `REFUSALS`) or wrong;
the hallucination rate is the share of questions answered wrongly. A wrong guess hedged with
one of those phrases ("可能是悉尼，但我不确定") counts as refused, not wrong.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from jielong.errors import UserError, json_problem
from jielong.eval.metrics import exact_match, qa_f1
from jielong.eval.replies import contains_answer

# Phrases that say "I don't know" (lower-cased; matched as substrings), in Traditional and
# Simplified Chinese and English. Extend the tuple for other wordings or languages.
REFUSALS = (
    "不知道", "不曉得", "不晓得", "不確定", "不确定", "不清楚", "無法回答", "无法回答",
    "無法確定", "无法确定", "無從得知", "无从得知", "沒有相關資訊", "没有相关信息",
    "i don't know", "i do not know", "i'm not sure", "i am not sure", "not sure",
    "i cannot answer", "i can't answer", "unable to answer", "no idea", "i don't have enough information",
)


@dataclass
class QAItem:
    id: str
    question: str
    context: str
    answers: list[str]
    answer_starts: list[int]  # as given: CMRC 2018's dev set has some that do not point at the text
    title: str = ""


def read_squad(path: str | Path) -> list[QAItem]:
    """The questions of a SQuAD-style JSON file, in order; `UserError` if it is malformed."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file; expected a SQuAD-style JSON file (DRCD, CMRC 2018)")
    try:
        doc = json.loads(path.read_bytes().decode("utf-8").removeprefix("\ufeff"))
    except UnicodeDecodeError:
        raise UserError(f"{path}: not valid UTF-8; re-save the file as UTF-8") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: not valid JSON: {json_problem(e)}") from None

    def fail(where: str, what: str):
        raise UserError(f"{path}: {where}: {what}; expected the SQuAD layout data → paragraphs "
                        "→ context, qas → id, question, answers[text, answer_start]")

    def need(obj, key: str, kind: type | tuple[type, ...], where: str):
        if not isinstance(obj, dict):
            fail(where, f"expected a JSON object, got {type(obj).__name__}")
        if key not in obj:
            fail(where, f"no {key!r} field")
        if not isinstance(obj[key], kind) or isinstance(obj[key], bool):
            name = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            fail(f"{where}.{key}", f"expected {name}, got {type(obj[key]).__name__}")
        return obj[key]

    items, seen = [], set()
    for a, article in enumerate(need(doc, "data", list, "top level")):
        title = article.get("title", "") if isinstance(article, dict) else ""
        for p, para in enumerate(need(article, "paragraphs", list, f"data[{a}]")):
            here = f"data[{a}].paragraphs[{p}]"
            context = need(para, "context", str, here)
            for q, qa in enumerate(need(para, "qas", list, here)):
                at = f"{here}.qas[{q}]"
                qid = str(need(qa, "id", (str, int), at))
                if qid in seen:
                    fail(f"{at}.id", f"question id {qid!r} appears twice")
                seen.add(qid)
                answers = need(qa, "answers", list, at)
                if not answers:
                    fail(f"{at}.answers", "empty (unanswerable SQuAD 2.0 questions are not supported)")
                texts = [need(x, "text", str, f"{at}.answers[{i}]") for i, x in enumerate(answers)]
                starts = [need(x, "answer_start", int, f"{at}.answers[{i}]") for i, x in enumerate(answers)]
                items.append(QAItem(qid, need(qa, "question", str, at), context, texts, starts,
                                    str(title)))
    if not items:
        raise UserError(f"{path}: no questions in this file; expected data → paragraphs → qas")
    return items


@dataclass
class QAScores:
    em: float  # exact match, 0–100, unanswered questions counted as 0
    f1: float  # CMRC 2018's F1, 0–100
    total: int
    skipped: int  # questions with no prediction


def qa_scores(items: Sequence[QAItem], predictions: Mapping[str, str]) -> QAScores:
    """EM and F1 over all `items`, as CMRC 2018's evaluation script sums them."""
    em = f1 = 0.0
    skipped = 0
    for it in items:
        if it.id not in predictions:
            skipped += 1
            continue
        em += exact_match(predictions[it.id], it.answers)
        f1 += qa_f1(predictions[it.id], it.answers)
    n = len(items)
    return QAScores(100 * em / n if n else 0.0, 100 * f1 / n if n else 0.0, n, skipped)


def is_refusal(reply: str) -> bool:
    """The reply says it does not know (one of `REFUSALS`, case-insensitively)."""
    text = " ".join(reply.lower().replace("’", "'").split())
    return any(r in text for r in REFUSALS)


@dataclass
class ClosedBookResult:
    n: int
    correct: int
    refused: int
    wrong: int
    accuracy: float  # correct / n
    refusal_rate: float  # refused / n
    hallucination_rate: float  # wrong / n: answered, and wrongly, rather than saying "I don't know"


def closed_book(replies: Sequence[str], answers: Sequence[str | Sequence[str]]) -> ClosedBookResult:
    """Sort replies into correct / refused / wrong against their gold answers (a reply that
    contains a gold answer is correct even if it also hedges)."""
    if len(replies) != len(answers):
        raise ValueError(f"{len(replies)} replies but {len(answers)} answer lists")
    correct = refused = 0
    for reply, gold in zip(replies, answers, strict=True):
        gold = [gold] if isinstance(gold, str) else gold
        if any(contains_answer(reply, g) for g in gold if g.strip()):
            correct += 1
        elif is_refusal(reply):
            refused += 1
    n = len(replies)
    wrong = n - correct - refused

    def rate(k: int) -> float:
        return k / n if n else 0.0
    return ClosedBookResult(n, correct, refused, wrong, rate(correct), rate(refused), rate(wrong))
