"""Multiple-choice scoring by log-likelihood, and greedy completion checks.

For a prompt and candidate continuations, the model's choice is the candidate whose tokens
it finds likeliest (summed log-probability). Prompt and candidate are tokenized together,
as they appear in running text: in Chinese a BPE token may span the join ("住在" + "龍鄉"
→ "住在龍", "鄉"), and splitting there would show the model token boundaries it never saw
in training. So every candidate of a question is scored from the same point: after the
longest run of tokens that all its candidates share and that lies wholly inside the
prompt. (Scoring each from its own join would charge "住在龍" to one candidate and only
"楓林" to another.) A question may give text that follows every candidate (`.end`, e.g.
"." or a line break): it is scored too, or " 1" would always beat " 12", its extension.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class ChoiceResult:
    accuracy: float  # share of questions whose answer scored highest
    chance: float  # expected accuracy of random guessing
    n: int
    by_group: dict[str, float]


def _split(tok, prompt: str, choice: str) -> tuple[list[int], int]:
    """Token ids of prompt+choice and the index of the first token that is not prompt-only."""
    ids = tok.encode(prompt + choice)
    limit, end, n_ctx = len(prompt.encode("utf-8")), 0, 0
    for i, t in enumerate(ids):
        end += len(tok.token_bytes(t))
        if end > limit:
            break
        n_ctx = i + 1
    return ids, max(1, n_ctx)


def _common_start(items: list[tuple[list[int], int]]) -> list[tuple[list[int], int]]:
    """The same scoring start for candidates of one prompt: at most each one's own, and
    within the token prefix all of them share."""
    start = min(n for _, n in items)
    first = items[0][0]
    for ids, _ in items[1:]:
        same = next((i for i, (a, b) in enumerate(zip(first, ids, strict=False)) if a != b),
                    min(len(first), len(ids)))
        start = min(start, same)
    return [(ids, max(1, start)) for ids, _ in items]


def sequence_logprobs(model, tok, pairs: list[tuple[str, str]], batch_size: int = 64) -> list[float]:
    """Summed log-probability of each continuation given its prompt."""
    return _logprobs(model, tok.eos_id, [_split(tok, p, c) for p, c in pairs], batch_size)


@torch.no_grad()
def _logprobs(model, pad: int, items: list[tuple[list[int], int]], batch_size: int = 64) -> list[float]:
    """Summed log-probability of each token list's tokens from its start index on."""
    device = next(model.parameters()).device
    scores: list[float] = []
    for i in range(0, len(items), batch_size):
        chunk = items[i:i + batch_size]
        T = max(len(ids) for ids, _ in chunk)
        x = torch.full((len(chunk), T), pad, dtype=torch.long)
        for j, (ids, _) in enumerate(chunk):
            x[j, :len(ids)] = torch.tensor(ids)  # right-padded: causal attention ignores the tail
        logp = F.log_softmax(model(x.to(device)).float(), dim=-1).cpu()
        for j, (ids, n_ctx) in enumerate(chunk):
            targets = torch.tensor(ids[n_ctx:])
            scores.append(logp[j, n_ctx - 1:len(ids) - 1].gather(1, targets[:, None]).sum().item())
    return scores


def choice_accuracy(model, tok, questions) -> ChoiceResult:
    """Score questions with .prompt, .answer, .choices, optionally .end, and a .lang for
    grouping."""
    items, spans = [], []
    for q in questions:
        spans.append((len(items), len(q.choices)))
        end = getattr(q, "end", "")
        items += _common_start([_split(tok, q.prompt, c + end) for c in q.choices])
    scores = _logprobs(model, tok.eos_id, items)
    right: dict[str, list[bool]] = {}
    for q, (start, n) in zip(questions, spans, strict=True):
        best = max(range(n), key=lambda k: scores[start + k])
        right.setdefault(q.lang, []).append(q.choices[best] == q.answer)
    flat = [r for rs in right.values() for r in rs]
    chance = sum(1 / len(q.choices) for q in questions) / max(1, len(questions))
    return ChoiceResult(sum(flat) / max(1, len(flat)), chance, len(flat),
                        {k: sum(v) / len(v) for k, v in right.items()})
