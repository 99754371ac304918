"""Question–passage pairs for the retrieval stages (`train embed`, `train rerank`): reading,
the held-out split, the batches, and recall of a ranking.

Two inputs:
- SQuAD-style JSON (DRCD 繁, CMRC 2018 简, SQuAD): data → paragraphs → context + qas →
  question; every question is paired with its paragraph, and the article's title is kept
  as the pair's group (a paragraph of the same article is the hardest negative);
- JSONL, one `{"query": "...", "passage": "..."}` a line (`--query_field`,
  `--passage_field` name others; an optional "group").

A passage is the unit of everything: the held-out split takes whole passages with all their
questions (so a held-out question's passage was never trained on), and a batch holds
distinct passages with one of each passage's questions — so in-batch negatives are real
negatives. Where an epoch boundary repeats a passage inside a batch, `same` marks it and the
losses leave it out.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from jielong.data.readers import iter_records
from jielong.errors import UserError, json_problem
from jielong.train.sampler import EpochSampler


@dataclass
class Passage:
    text: str
    group: str
    queries: list[str]
    where: str  # file:line, or file: title #n for SQuAD


def read_squad(path: Path) -> list[Passage]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: not valid JSON ({json_problem(e)}); a SQuAD-style "
                        "file is one JSON object {\"data\": [...]}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise UserError(f"{path}: expected SQuAD's layout {{\"data\": [{{\"paragraphs\": [...]}}]}}; "
                        "for pairs use JSONL lines {\"query\": ..., \"passage\": ...}")
    out = []
    for a, article in enumerate(doc["data"]):
        title = str(article.get("title") or f"article {a}")
        for n, para in enumerate(article.get("paragraphs") or []):
            text = str(para.get("context") or "").strip()
            qs = [str(q.get("question") or "").strip() for q in para.get("qas") or []]
            qs = [q for q in qs if q]
            if text and qs:
                out.append(Passage(text, title, qs, f"{path}: {title} #{n}"))
    return out


def read_pairs(path: str | Path, query_field: str = "query", passage_field: str = "passage") -> list[Passage]:
    """The passages of a SQuAD-style JSON or a pairs JSONL file, each with its questions."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such file; pass SQuAD-style JSON (e.g. drcd-dev.json) or JSONL "
                        f'lines {{"{query_field}": ..., "{passage_field}": ...}}')
    if p.suffix == ".json":
        passages = read_squad(p)
    else:
        by_text: dict[str, Passage] = {}
        for where, obj in iter_records(p):
            if not isinstance(obj, dict) or not all(isinstance(obj.get(f), str) for f in (query_field, passage_field)):
                have = ", ".join(map(repr, list(obj)[:8])) if isinstance(obj, dict) else type(obj).__name__
                raise UserError(f"{where}: expected {{\"{query_field}\": \"...\", \"{passage_field}\": "
                                f"\"...\"}} (strings), got {have}; --query_field / --passage_field "
                                "name other fields")
            q, text = obj[query_field].strip(), obj[passage_field].strip()
            if not q or not text:
                raise UserError(f"{where}: empty {query_field if not q else passage_field}; remove the line")
            by_text.setdefault(text, Passage(text, str(obj.get("group", "")), [], where)).queries.append(q)
        passages = list(by_text.values())
    if len(passages) < 2:
        raise UserError(f"{p}: {len(passages)} passage(s) with questions; contrastive training "
                        "needs at least two (the others are each question's negatives)")
    return passages


def split_passages(passages: list[Passage], fraction: float, seed: int) -> tuple[list[Passage], list[Passage]]:
    """(train, held out): `fraction` of the passages, with all their questions, held out."""
    if not 0 <= fraction < 1:
        raise UserError(f"--val_fraction={fraction} must be in [0, 1)")
    order = list(range(len(passages)))
    random.Random(seed).shuffle(order)
    k = min(len(passages) - 2, round(len(passages) * fraction)) if fraction > 0 else 0
    held = set(order[:max(k, 0)])
    return ([p for i, p in enumerate(passages) if i not in held],
            [p for i, p in enumerate(passages) if i in held])


class PairBatches:
    """Batches of (one question, its passage) over distinct passages, a function of (step,
    micro, rank) alone: the passage order is `EpochSampler`'s, the question is drawn from
    the passage's by a generator seeded with the same numbers."""

    def __init__(self, passages: list[Passage], batch_size: int, grad_accum: int, world: int, seed: int):
        self.passages, self.seed = passages, seed
        self.sampler = EpochSampler(len(passages), batch_size, grad_accum, world, seed)

    def draw(self, step: int, micro: int, rank: int) -> tuple[list[int], list[int]]:
        """(passage indices, which of each passage's questions)."""
        idx = self.sampler.indices(step, micro, rank)
        rng = random.Random(f"{self.seed}:{step}:{self.sampler.global_micro(micro, rank)}:0")
        return idx, [rng.randrange(len(self.passages[i].queries)) for i in idx]


def same_passage(idx: list[int]) -> torch.Tensor:
    """(B, B) True where row j's passage is row i's too but j is not i: not a negative."""
    t = torch.tensor(idx)
    return (t[:, None] == t[None, :]) & ~torch.eye(len(idx), dtype=torch.bool)


def recall_at(scores: np.ndarray, gold: list[int], ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """recall@k and MRR of a (queries, passages) score matrix; gold[i]: query i's passage."""
    g = np.asarray(gold)
    # 0 = first; a tie counts against the gold passage (a model that scores all alike ranks
    # it last, not first)
    rank = (scores >= scores[np.arange(len(g)), g][:, None]).sum(1) - 1
    out = {f"recall@{k}": float((rank < k).mean()) for k in ks}
    out["mrr"] = float((1.0 / (rank + 1)).mean())
    return out


def held_out_queries(passages: list[Passage]) -> tuple[list[str], list[int]]:
    """Every held-out question and the index of its passage."""
    qs, gold = [], []
    for i, p in enumerate(passages):
        qs += p.queries
        gold += [i] * len(p.queries)
    return qs, gold
