"""Pairwise judging, the part that needs no model: the judge's prompt, reading its verdict,
the both-orders rule, and the tallies (`jielong eval judge` runs it; jielong.eval.judges asks
the judge).

The prompt follows MT-Bench's pairwise prompt in manner (Zheng et al. 2023, "Judging
LLM-as-a-Judge with MT-Bench and Chatbot Arena", FastChat's `pair-v2`), in our own words: a
system message casting the model as an impartial judge that weighs helpfulness, correctness,
relevance and completeness, is told that order, length and names must not sway it, explains
briefly, and ends with "[[A]]", "[[B]]" or "[[C]]" (a tie); the user message holds the question
and the two answers between begin/end markers. English, Simplified and Traditional Chinese
variants; `auto` picks by the question's script (jielong.tokenizer.doc_kind). For scoring by
log-likelihood the last sentence asks for the verdict alone.

Both orders: each pair is judged as (A, B) and as (B, A). The rule is MT-Bench's (paper
§3.4, "Swapping positions"; FastChat's `gen_judgment` g1/g2 winners, `show_result` counting
an inconsistent pair as a tie): a model wins only when it wins in both orders; both ties is a
tie; any other pair of verdicts (one win and one loss, or a win and a tie) is inconsistent and
counts as a tie. A pair where either order gave no verdict has none. The share of pairs whose
two verdicts agree is the position consistency (MT-Bench Table 2). The lenient rule (a win
and a tie is a win) is reported beside it.

Agreement with human votes is computed as FastChat's `compute_agreement.py` does: "with tie"
over votes whose human winner is a, b or tie; "without tie" leaves out the votes where the
human or the judge said tie. both_bad votes and pairs without a judge verdict are counted
and left out.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

import numpy as np

from jielong.eval.compare import bootstrap, interval
from jielong.tokenizer import doc_kind

LANGS = ("en", "zh-hans", "zh-hant")
VERDICTS = ("A", "B", "C")
OUTCOMES = ("a", "b", "tie")

SYSTEM = {
    "en": ("You are an impartial judge. Compare the answers two AI assistants gave to the user "
           "question below and decide which one answers it better. Weigh how helpful, correct, "
           "relevant and complete each answer is and how well it follows the user's "
           "instructions; correctness matters more than style. Neither the order in which the "
           "answers are shown, nor their length, nor the assistants' names may influence you. "),
    "zh-hans": ("你是一位公正的评审。请比较两位 AI 助手对下面用户问题的回答，判断哪一个回答得更好。"
                "请考虑每个回答是否有帮助、是否正确、是否切题、是否完整，以及是否遵循用户的指示；"
                "正确比文采更重要。回答出现的先后顺序、回答的长短和助手的名字都不应影响你的判断。"),
    "zh-hant": ("你是一位公正的評審。請比較兩位 AI 助理對下面使用者問題的回答，判斷哪一個回答得更好。"
                "請考慮每個回答是否有幫助、是否正確、是否切題、是否完整，以及是否遵循使用者的指示；"
                "正確比文采更重要。回答出現的先後順序、回答的長短和助理的名字都不應影響你的判斷。"),
}
EXPLAIN = {
    "en": ("First explain your comparison briefly, then give your final verdict on its own line, "
           'exactly one of: "[[A]]" if assistant A\'s answer is better, "[[B]]" if assistant '
           'B\'s answer is better, "[[C]]" if they are equally good.'),
    "zh-hans": ("请先简要说明你的比较，然后在单独一行给出最终裁决，只能是以下之一：“[[A]]”表示助手 A "
                "的回答更好，“[[B]]”表示助手 B 的回答更好，“[[C]]”表示两者一样好。"),
    "zh-hant": ("請先簡要說明你的比較，然後在單獨一行給出最終裁決，只能是以下之一：「[[A]]」表示助理 A "
                "的回答較好，「[[B]]」表示助理 B 的回答較好，「[[C]]」表示兩者一樣好。"),
}
VERDICT_ONLY = {
    "en": ('Reply with your verdict only, exactly one of: "[[A]]" if assistant A\'s answer is '
           'better, "[[B]]" if assistant B\'s answer is better, "[[C]]" if they are equally good.'),
    "zh-hans": ("只回复裁决，只能是以下之一：“[[A]]”表示助手 A 的回答更好，“[[B]]”表示助手 B "
                "的回答更好，“[[C]]”表示两者一样好。"),
    "zh-hant": ("只回覆裁決，只能是以下之一：「[[A]]」表示助理 A 的回答較好，「[[B]]」表示助理 B "
                "的回答較好，「[[C]]」表示兩者一樣好。"),
}
LABELS = {  # system prompt, earlier turns, question, user, assistant, answer begins, answer ends
    "en": ("System prompt the assistants were given", "Conversation before the question",
           "User question", "User", "Assistant", "The start of assistant {x}'s answer",
           "The end of assistant {x}'s answer"),
    "zh-hans": ("助手收到的系统提示", "问题之前的对话", "用户问题", "用户", "助手",
                "助手 {x} 的回答开始", "助手 {x} 的回答结束"),
    "zh-hant": ("助理收到的系統提示", "問題之前的對話", "使用者問題", "使用者", "助理",
                "助理 {x} 的回答開始", "助理 {x} 的回答結束"),
}


@dataclass
class JudgePrompt:
    """One judgment to ask for: the messages sent, and the answers as shown (first = A)."""
    messages: list[dict]
    first: str
    second: str


# Characters of short questions that doc_kind's script sets leave out (台灣, 哪裡, 什麼, 嗎).
MORE_HANT, MORE_HANS = set("灣臺裡麼嗎誰"), set("湾么吗谁")


def pick_lang(lang: str, question: str) -> str:
    """"en", "zh-hans" or "zh-hant": as given, or (auto / zh) by the question's script; a
    Chinese question whose script is still unclear gets Simplified."""
    if lang in LANGS:
        return lang
    kind = doc_kind(question) or "en"
    if kind == "en":
        return "zh-hans" if lang == "zh" else "en"
    if kind == "zh":
        hant, hans = sum(c in MORE_HANT for c in question), sum(c in MORE_HANS for c in question)
        kind = "zh-Hant" if hant > hans else "zh-Hans"
    return "zh-hant" if kind == "zh-Hant" else "zh-hans"


def judge_prompt(conversation: list[dict], first: str, second: str, lang: str = "auto",
                 verdict_only: bool = False) -> JudgePrompt:
    """The judge's messages for `conversation` (system first when any, ending with the user
    question both answers reply to) answered by `first` (shown as A) and `second` (B)."""
    question = conversation[-1]["content"]
    lang = pick_lang(lang, question)
    sys_label, before, q_label, user, bot, start, end = LABELS[lang]
    parts = []
    if conversation[0]["role"] == "system":
        parts.append(f"[{sys_label}]\n{conversation[0]['content']}")
    earlier = [m for m in conversation[:-1] if m["role"] != "system"]
    if earlier:
        turns = "\n".join(f"{user if m['role'] == 'user' else bot}: {m['content']}" for m in earlier)
        parts.append(f"[{before}]\n{turns}")
    parts.append(f"[{q_label}]\n{question}")
    for x, answer in (("A", first), ("B", second)):
        parts.append(f"[{start.format(x=x)}]\n{answer}\n[{end.format(x=x)}]")
    system = SYSTEM[lang] + (VERDICT_ONLY if verdict_only else EXPLAIN)[lang]
    return JudgePrompt([{"role": "system", "content": system},
                        {"role": "user", "content": "\n\n".join(parts)}], first, second)


_VERDICT = re.compile(r"\[\[\s*(A|B|C|TIE)\s*\]\]", re.I)


def parse_verdict(text: str | None) -> str | None:
    """"A", "B" or "C" from a judge's reply: the last "[[A]]", "[[B]]", "[[C]]" (or "[[tie]]")
    anywhere in it, full-width brackets and letters read as ASCII (NFKC); None when there is
    none."""
    if not text:
        return None
    found = _VERDICT.findall(unicodedata.normalize("NFKC", text))
    if not found:
        return None
    v = found[-1].upper()
    return "C" if v == "TIE" else v


def logprob_verdict(scores: dict[str, float]) -> str:
    """The verdict of highest log-likelihood (A before B before C on an exact tie)."""
    return max(VERDICTS, key=lambda v: (scores[v], -VERDICTS.index(v)))


def outcome(verdict: str | None, swapped: bool) -> str | None:
    """A verdict on positions as a winner among the pair's own labels: "a", "b", "tie"."""
    if verdict is None:
        return None
    if verdict == "C":
        return "tie"
    return ("a" if verdict == "A" else "b") if not swapped else ("b" if verdict == "A" else "a")


def both_orders(first: str | None, second: str | None) -> tuple[str | None, str | None]:
    """(strict, lenient) outcome of a pair from its two orders' outcomes (each "a", "b",
    "tie" or None): strict is MT-Bench's rule (inconsistent → tie), lenient lets a win and a
    tie be a win."""
    if first is None or second is None:
        return None, None
    if first == second:
        return first, first
    lenient = ({first, second} - {"tie"}).pop() if "tie" in (first, second) else "tie"
    return "tie", lenient


def tally(pairs: list[dict], samples: int = 2000, seed: int = 0) -> dict:
    """Win/tie/loss of a over b over `pairs` (each with "outcome", "lenient", "orders": the two
    orders' outcomes, "verdicts": the two verdicts on positions), with bootstrap 95% intervals
    of a's win rate and score (win + ½ tie)."""
    judged = [p for p in pairs if p["outcome"] is not None]
    n = len(judged)
    out = {"pairs": len(pairs), "judged": n, "no_verdict": len(pairs) - n}
    for k in OUTCOMES:
        out[k] = sum(p["outcome"] == k for p in judged)
        out["lenient_" + k] = sum(p["lenient"] == k for p in judged)
    consistent = sum(p["orders"][0] == p["orders"][1] for p in judged)
    out["consistency"] = consistent / n if n else None
    # position bias: of the decisive verdicts, the share that picked the answer shown first
    decisive = [v for p in pairs for v in p["verdicts"] if v in ("A", "B")]
    out["first_position_share"] = sum(v == "A" for v in decisive) / len(decisive) if decisive else None
    out["verdicts_missing"] = sum(v is None for p in pairs for v in p["verdicts"])
    if n:
        won = np.array([p["outcome"] == "a" for p in judged], dtype=float)
        score = np.array([{"a": 1.0, "tie": 0.5, "b": 0.0}[p["outcome"]] for p in judged])
        out["win_rate_a"] = float(won.mean())
        out["win_rate_a_ci"] = interval(bootstrap(lambda c: float(c.mean()), [won], samples, seed))
        out["tie_rate"] = out["tie"] / n
        out["win_rate_b"] = out["b"] / n
        out["score_a"] = float(score.mean())
        out["score_a_ci"] = interval(bootstrap(lambda c: float(c.mean()), [score], samples, seed))
    return out


def agreement(humans: list[str], judged: list[str | None], samples: int = 2000,
              seed: int = 0) -> dict:
    """How often the judge's outcome (a, b, tie or None) matches the human winner (a, b, tie
    or both_bad), with and without ties, and the confusion table {human: {judge: count}}."""
    confusion = {h: {j: 0 for j in (*OUTCOMES, "none")} for h in (*OUTCOMES, "both_bad")}
    for h, j in zip(humans, judged, strict=True):
        confusion[h][j or "none"] += 1
    out: dict = {"votes": len(humans), "both_bad": sum(h == "both_bad" for h in humans),
                 "no_verdict": sum(row["none"] for h, row in confusion.items() if h != "both_bad"),
                 "confusion": confusion}
    for name, keep in (("with_tie", lambda h, j: True),
                       ("without_tie", lambda h, j: "tie" not in (h, j))):
        hits = np.array([h == j for h, j in zip(humans, judged, strict=True)
                         if h != "both_bad" and j is not None and keep(h, j)], dtype=float)
        out[name] = {"n": len(hits), "agree": int(hits.sum()),
                     "rate": float(hits.mean()) if len(hits) else None,
                     "ci": interval(bootstrap(lambda c: float(c.mean()), [hits], samples, seed))
                     if len(hits) else None}
    return out
