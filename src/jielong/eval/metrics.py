"""Scores of generated text against references, for Chinese and English: exact match and F1
as CMRC 2018 computes them, ROUGE-L, and BLEU and chrF from sacrebleu.

- `exact_match`, `qa_f1`: per answer, in [0, 1], the best over the gold answers, reproducing
  CMRC 2018's official evaluation script (ymcui/cmrc2018, squad-style-data/
  cmrc2018_evaluate.py, "v5 - special"). What it does, rewritten here:
  * both texts are lower-cased and stripped of surrounding whitespace;
  * its punctuation list (`CMRC_PUNCTUATION`) is removed: only those characters, so ASCII
    "," "." "?" "!" stay; its list also holds "……", which never matches because the
    script compares one character at a time;
  * EM: the texts, punctuation removed, are equal (spaces inside still count);
  * F1: the text is cut into segments, each character in U+4E00…U+9FA5 one segment and the
    runs between them split into words (the script uses nltk.word_tokenize there; we split
    on whitespace and peel ASCII punctuation off the ends of each word, which agrees with it
    on words and numbers, not on English contractions); the overlap is the longest common
    *contiguous* run of segments, precision = overlap / prediction segments, recall =
    overlap / gold segments, F1 their harmonic mean, 0 when nothing overlaps.
  The script's corpus score is 100 × the mean over all questions, unanswered ones scoring 0
  (`jielong.eval.qa.qa_scores`).
- `rouge_l`: F-measure (β = 1, as Google's rouge-score) of the longest common subsequence,
  over characters for Chinese and lower-cased words for other text; punctuation is dropped.
- `corpus_bleu`, `corpus_chrf`: sacrebleu's corpus scores (the `eval` extra), BLEU with its
  "zh" tokenizer when the references are Chinese, "13a" otherwise.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

from jielong.errors import UserError

CMRC_PUNCTUATION = frozenset("-:_*^/\\~`+=，。：？！“”；’《》·、「」（）－～『』")
CMRC_CHINESE = re.compile("[\u4e00-\u9fa5]")
HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"
ROUGE_TOKEN = re.compile(f"[{HAN}]|(?:(?![{HAN}])[^\\W_])+")
HAS_HAN = re.compile(f"[{HAN}]")


def words(run: str) -> list[str]:
    """The words of a run of non-Chinese text: whitespace-separated, ASCII punctuation at
    either end of a word split off, one character a token (our stand-in for nltk)."""
    out = []
    for piece in run.split():
        head, tail = [], []
        while piece and piece[0] in string.punctuation:
            head.append(piece[0])
            piece = piece[1:]
        while piece and piece[-1] in string.punctuation:
            tail.insert(0, piece[-1])
            piece = piece[:-1]
        out += head + ([piece] if piece else []) + tail
    return out


def cmrc_segments(text: str, remove_punctuation: bool = True) -> list[str]:
    """CMRC 2018's mixed segmentation: each Chinese character (and each of its punctuation
    marks, when kept) a segment, the text between split into words."""
    out, run = [], ""
    for ch in text.lower().strip():
        if remove_punctuation and ch in CMRC_PUNCTUATION:
            continue
        if CMRC_CHINESE.match(ch) or ch in CMRC_PUNCTUATION:
            out += words(run)
            run = ""
            out.append(ch)
        else:
            run += ch
    return out + words(run)


def cmrc_normalize(text: str) -> str:
    """Lower-cased, stripped, CMRC 2018's punctuation removed: what EM compares."""
    return "".join(ch for ch in text.lower().strip() if ch not in CMRC_PUNCTUATION)


def longest_common_run(a: Sequence, b: Sequence) -> int:
    """Length of the longest contiguous run that `a` and `b` share (dynamic programming)."""
    best, prev = 0, [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b):
            if x == y:
                cur[j + 1] = prev[j] + 1
                best = max(best, cur[j + 1])
        prev = cur
    return best


def gold_list(answers: str | Sequence[str]) -> list[str]:
    answers = [answers] if isinstance(answers, str) else list(answers)
    if not answers:
        raise ValueError("no gold answers to compare with")
    return answers


def exact_match(prediction: str, answers: str | Sequence[str]) -> float:
    """1.0 when the prediction equals any gold answer after `cmrc_normalize`, else 0.0."""
    p = cmrc_normalize(prediction)
    return float(any(cmrc_normalize(a) == p for a in gold_list(answers)))


def qa_f1(prediction: str, answers: str | Sequence[str]) -> float:
    """CMRC 2018's F1 of the prediction against the best-matching gold answer, in [0, 1]."""
    pred = cmrc_segments(prediction)
    best = 0.0
    for a in gold_list(answers):
        gold = cmrc_segments(a)
        overlap = longest_common_run(gold, pred)
        if overlap:
            p, r = overlap / len(pred), overlap / len(gold)
            best = max(best, 2 * p * r / (p + r))
    return best


def rouge_tokens(text: str) -> list[str]:
    """Chinese characters one by one and lower-cased words; punctuation and spaces dropped."""
    return ROUGE_TOKEN.findall(text.lower())


def longest_common_subsequence(a: Sequence, b: Sequence) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(hypothesis: str, reference: str) -> float:
    """ROUGE-L F-measure in [0, 1]: LCS over `rouge_tokens`, 2PR / (P + R)."""
    h, r = rouge_tokens(hypothesis), rouge_tokens(reference)
    lcs = longest_common_subsequence(h, r)
    if not lcs:
        return 0.0
    p, rec = lcs / len(h), lcs / len(r)
    return 2 * p * rec / (p + rec)


def corpus_rouge_l(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure over the pairs, × 100."""
    pairs = check_pairs(hypotheses, references)
    return 100 * sum(rouge_l(h, r) for h, r in pairs) / len(pairs) if pairs else 0.0


def check_pairs(hypotheses: Sequence[str], references: Sequence[str]) -> list[tuple[str, str]]:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    return list(zip(hypotheses, references, strict=True))


def is_chinese(texts: Sequence[str]) -> bool:
    """Any Chinese character in `texts`: the references then take sacrebleu's "zh" tokenizer."""
    return any(HAS_HAN.search(t) for t in texts)


def sacrebleu_module():
    try:
        import sacrebleu  # the eval extra
    except ImportError:
        raise UserError("BLEU and chrF need sacrebleu; install it with "
                        "`pip install 'jielong[eval]'`") from None
    return sacrebleu


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str],
                tokenize: str | None = None) -> float:
    """sacrebleu's corpus BLEU (0–100), one reference per hypothesis; `tokenize` defaults to
    "zh" when the references hold Chinese, else "13a" (sacrebleu's default)."""
    check_pairs(hypotheses, references)
    tokenize = tokenize or ("zh" if is_chinese(references) else "13a")
    return sacrebleu_module().corpus_bleu(list(hypotheses), [list(references)], tokenize=tokenize).score


def corpus_chrf(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """sacrebleu's corpus chrF (0–100: character 6-grams, β = 2, spaces ignored)."""
    check_pairs(hypotheses, references)
    return sacrebleu_module().corpus_chrf(list(hypotheses), [list(references)]).score


def sentence_chrf(hypothesis: str, reference: str) -> float:
    """sacrebleu's chrF (0–100) of one hypothesis against its reference: a per-row score
    (corpus chrF pools the n-gram counts of all rows first, so it is not their mean)."""
    return sacrebleu_module().sentence_chrf(hypothesis, [reference]).score
