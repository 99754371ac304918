"""Judging a chat model by what it writes: replies to held-out prompts, whether they stop
by themselves, whether they contain the answer, and chrF against a reference.

chrF (Popović 2015) is the F-score of character n-grams (n = 1…6, recall weighted β = 2)
between a reply and its reference: it works the same for Chinese, which has no spaces to
split words on, and for English.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

from jielong.infer.generate import generate_ids
from jielong.infer.sampling import SamplingParams


@dataclass
class Reply:
    text: str
    stopped: bool  # ended with an end-of-turn token, not at the token budget


@torch.no_grad()
def chat_replies(model, tok, conversations: list[list[dict]], max_new_tokens: int = 48,
                 batch_size: int = 32, stop_ids: set[int] | None = None) -> list[Reply]:
    """Greedy replies to each conversation (rendered with the chat template)."""
    stops = stop_ids if stop_ids is not None else tok.end_ids | ({model.config.eos_token_id} - {None})
    s = SamplingParams(max_tokens=max_new_tokens, temperature=0.0)
    out: list[Reply] = []
    for i in range(0, len(conversations), batch_size):
        chunk = conversations[i:i + batch_size]
        prompts = [tok.encode_chat(c, add_generation_prompt=True)[0] for c in chunk]
        for ids in generate_ids(model, prompts, s, stops):
            out.append(Reply(tok.decode(ids, skip_special_tokens=True).strip(),
                             len(ids) < max_new_tokens))
    return out


def contains_answer(reply: str, answer: str) -> bool:
    """The answer appears in the reply (case- and space-insensitive)."""
    norm = lambda t: "".join(t.lower().split())  # noqa: E731
    return norm(answer) in norm(reply)


def _ngrams(text: str, n: int) -> Counter:
    text = "".join(text.split())
    return Counter(text[i:i + n] for i in range(len(text) - n + 1))


def chrf(hypothesis: str, reference: str, max_n: int = 6, beta: float = 2.0) -> float:
    """chrF in [0, 100]: character n-gram precision and recall averaged over n, combined
    as an F-score weighting recall beta times as much as precision (spaces ignored)."""
    precisions, recalls = [], []
    for n in range(1, max_n + 1):
        h, r = _ngrams(hypothesis, n), _ngrams(reference, n)
        if not h or not r:
            continue
        overlap = sum((h & r).values())
        precisions.append(overlap / sum(h.values()))
        recalls.append(overlap / sum(r.values()))
    if not precisions:
        return 0.0
    p, r = sum(precisions) / len(precisions), sum(recalls) / len(recalls)
    if p + r == 0:
        return 0.0
    return 100 * (1 + beta ** 2) * p * r / (beta ** 2 * p + r)
