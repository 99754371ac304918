"""Training a cross-encoder reranker (`jielong.rag.rerank.Reranker`) on question–passage pairs.

Run as:
    jielong train rerank ../shared/data/drcd-dev.json --model models/bge-small-zh-v1.5 --out runs/rerank
    jielong train rerank pairs.jsonl --model runs/embed/model --negatives 7 --steps 100

Each question is scored with its passage and `--negatives` others, and the loss is the
cross-entropy of the positive among them (the "localized contrastive estimation" of
Gao et al. 2021, "Rethink Training of BERT Rerankers", which bge-reranker's training
follows: one positive, a group of negatives, softmax over the group). The negatives are
the next passages of the batch (distinct passages: `jielong.train.pairs`) and, with
`--hard_negatives` (the default), first a passage of the same article (SQuAD's title, a
JSONL line's "group"): similar text, wrong answer — the case a first-stage retriever gets
wrong and a reranker is for.

The start is any BERT / XLM-R folder (its head new: BERT's pooler becomes the head's dense
layer) or a reranker to train further. The head reads the first token's state ([CLS]), so
that state must vary with the input: in a random BERT, or one that `jielong train embed`
trained mean-pooled, it hardly does (`cls_spread` 3e-4 / 6e-4), and from there the loss sat
at ln 4 for ~100 steps on CMRC; trained with `--pooling cls` (spread 0.09) the encoder
starts a reranker that learns (bench/RESULTS.md, "the reranker"). The trainer prints a note
when a new head's start is that flat. `--max_len` is saved as the reranker's window.
OUT/model is a one-label sequence classifier that `Reranker.load` and transformers read.
Held out (`--val_fraction` of the passages): each question against its passage and
`--eval_candidates` others, the positive's top-1 rate (accuracy) and MRR, before and after,
in OUT/report.json.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open

from jielong.checkpoint import TRAINER_STATE
from jielong.errors import UserError
from jielong.files import write_json
from jielong.plots import loss_curve
from jielong.rag.rerank import Reranker, head_names
from jielong.runtime import init_distributed, is_main_process, pick_device
from jielong.train.loop import TrainConfig, fit
from jielong.train.pairs import PairBatches, Passage, read_pairs, recall_at, split_passages

RERANK_TRAIN = TrainConfig(lr=2e-5, warmup_steps=10, steps=200, batch_size=8, eval_every=50,
                           save_every=100, weight_decay=0.01)  # `train rerank` defaults
FLAT_CLS = 0.01  # a [CLS] spread (see cls_spread) below this gives a new head nothing to read


@torch.no_grad()
def cls_spread(model: Reranker, queries: list[str], passages: list[str]) -> float:
    """How much the first-token state, the head's input, varies across (query, passage) pairs:
    its standard deviation over the pairs, averaged over the dimensions, over its mean norm.
    About 3e-4 for a random BERT and 6e-4 for one trained mean-pooled (bench/RESULTS.md), 0.1
    for one trained pooled by [CLS]."""
    was = model.training
    x = model.encode_pairs(queries, passages)
    h = model.eval().encoder(**x)[:, 0].float()
    model.train(was)
    return float(h.std(0).mean() / h.norm(dim=-1).mean())


def negatives_for(i: int, batch: list[int], passages: list[Passage], groups: dict[str, list[int]],
                  n: int, hard: bool, rng: random.Random) -> list[int]:
    """`n` passages that are not passage `batch[i]`: one of its article first (with `hard`),
    then the batch's next ones, then random ones when the batch is short."""
    pos = batch[i]
    out: list[int] = []
    if hard:
        siblings = [j for j in groups.get(passages[pos].group, []) if j != pos]
        if siblings:
            out.append(rng.choice(siblings))
    for k in range(1, len(batch)):
        if len(out) >= n:
            break
        j = batch[(i + k) % len(batch)]
        if j != pos and j not in out:
            out.append(j)
    while len(out) < n:  # a batch of fewer distinct passages than negatives wanted
        j = rng.randrange(len(passages))
        if j != pos:
            out.append(j)
    return out[:n]


class RerankStage:
    """The loop's stage: B questions, each with its passage and `negatives` others, scored as
    pairs; cross-entropy of the positive in its group."""

    def __init__(self, model: Reranker, train: list[Passage], val: list[Passage], cfg: TrainConfig,
                 negatives: int, hard: bool, eval_candidates: int, world: int = 1):
        self.model, self.train, self.val = model, train, val
        self.negatives, self.hard, self.seed = negatives, hard, cfg.seed
        self.batches = PairBatches(train, cfg.batch_size, cfg.grad_accum, world, cfg.seed)
        self.groups: dict[str, list[int]] = {}
        for j, p in enumerate(train):
            if p.group:
                self.groups.setdefault(p.group, []).append(j)
        self.eval_batch = cfg.batch_size * (negatives + 1)
        # Held out: each question, its passage first, then eval_candidates fixed others.
        rng = random.Random(cfg.seed)
        self.val_sets = []
        for i, p in enumerate(val):
            others = [j for j in range(len(val)) if j != i]
            cands = [i] + rng.sample(others, min(eval_candidates, len(others)))
            self.val_sets += [(q, cands) for q in p.queries]

    def batch(self, step: int, micro: int, rank: int) -> dict[str, torch.Tensor]:
        idx, which = self.batches.draw(step, micro, rank)
        g = self.batches.sampler.global_micro(micro, rank)  # as on any number of processes
        rng = random.Random(f"neg:{self.seed}:{step}:{g}:0")
        queries, passages = [], []
        for i, (pos, j) in enumerate(zip(idx, which, strict=True)):
            group = [pos] + negatives_for(i, idx, self.train, self.groups, self.negatives, self.hard, rng)
            queries += [self.train[pos].queries[j]] * len(group)
            passages += [self.train[g].text for g in group]
        x = self.model.encode_pairs(queries, passages)
        return {**x, "group": torch.tensor(len(idx))}

    def loss(self, model, batch) -> tuple[torch.Tensor, int]:
        scores = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        scores = scores.float().view(int(batch["group"]), -1)
        target = torch.zeros(len(scores), dtype=torch.long, device=scores.device)
        return F.cross_entropy(scores, target), int(batch["attention_mask"].sum())

    @torch.no_grad()
    def evaluate(self, model) -> dict[str, float]:
        if not self.val_sets:
            return {}
        device = next(model.parameters()).device
        width = max(len(c) for _, c in self.val_sets)
        queries = [q for q, c in self.val_sets for _ in c]
        passages = [self.val[j].text for _, c in self.val_sets for j in c]
        flat = []
        for s in range(0, len(queries), self.eval_batch):
            x = model.encode_pairs(queries[s:s + self.eval_batch], passages[s:s + self.eval_batch])
            flat += model(**{k: v.to(device) for k, v in x.items()}).float().cpu().tolist()
        scores = np.full((len(self.val_sets), width), -np.inf)
        at = 0
        for r, (_, c) in enumerate(self.val_sets):
            scores[r, :len(c)] = flat[at:at + len(c)]
            at += len(c)
        target = torch.zeros(len(scores), dtype=torch.long)
        val_loss = F.cross_entropy(torch.tensor(scores, dtype=torch.float32), target).item()
        r = recall_at(scores, [0] * len(scores), ks=(1,))
        return {"val_loss": val_loss, "accuracy": r["recall@1"], "mrr": r["mrr"]}


def train_rerank(
    data: str,
    model: str = "runs/embed/model",
    out: str = "runs/rerank",
    val_fraction: float = 0.1,
    query_field: str = "query",
    passage_field: str = "passage",
    negatives: int = 3,
    hard_negatives: bool = True,
    eval_candidates: int = 9,
    max_len: int = 384,
    resume: bool = False,
    train: TrainConfig = RERANK_TRAIN,
) -> dict:
    """Train a cross-encoder reranker on question–passage pairs (one positive among negatives).

    Args:
        data: SQuAD-style JSON (DRCD, CMRC 2018) or JSONL lines {"query": ..., "passage": ...}.
        model: A BERT / XLM-R encoder folder (its head starts new) or a reranker to train further.
        out: Run directory (checkpoints, metrics.jsonl, loss.png, report.json, model/).
        val_fraction: Share of the passages held out, with their questions.
        query_field: The question field of a JSONL line.
        passage_field: The passage field of a JSONL line.
        negatives: Passages scored against each question besides its own.
        hard_negatives: Make the first negative a passage of the same article (title / "group") when there is one.
        eval_candidates: Held-out passages each held-out question is ranked against, besides its own.
        max_len: Tokens per (question, passage) pair; longer passages are cut.
        resume: Continue from the last checkpoint in OUT.
        train: Optimisation settings (steps, batch size, learning rate, …).
    """
    train.validate()
    if negatives < 1:
        raise UserError(f"--negatives={negatives} must be at least 1")
    if max_len < 8:
        raise UserError(f"--max_len={max_len} must be at least 8")
    passages = read_pairs(data, query_field, passage_field)
    kept, held = split_passages(passages, val_fraction, train.seed)
    device = pick_device(train.device)
    _, world = init_distributed(device)
    new_head = _head_missing(Path(model))
    reranker = Reranker.load(model, new_head=new_head).train()
    reranker.max_length = min(max_len, reranker.encoder.config.max_tokens)
    stage = RerankStage(reranker, kept, held, train, negatives, hard_negatives, eval_candidates, world)
    run, main = Path(out), is_main_process()
    before = {}
    if main:
        n_q = sum(len(p.queries) for p in kept)
        print(f"rerank: {len(kept):,} passages / {n_q:,} questions to train on, {len(held):,} "
              f"passages held out; 1 positive + {negatives} negatives a question"
              f"{' (the first from the same article)' if hard_negatives else ''}; "
              f"{'a new head on ' if new_head else ''}{reranker.encoder.config.model_type}, "
              f"{sum(p.numel() for p in reranker.parameters()) / 1e6:.3g}M parameters")
        if new_head and len(kept) > 1:
            qs = [p.queries[0] for p in kept[:16]]
            texts = [p.text for p in kept[:len(qs)]]  # each question with its passage and the next one
            spread = cls_spread(reranker, qs * 2, texts + texts[1:] + texts[:1])
            if spread < FLAT_CLS:
                print(f"note: the start's [CLS] state hardly varies across pairs (spread {spread:.1e} < {FLAT_CLS}): "
                      "a new head reads no signal there and the loss may stay at "
                      f"ln({negatives + 1}) = {np.log(negatives + 1):.3f}; start from an encoder trained "
                      "with `jielong train embed --pooling cls` (or one pretrained with a [CLS] task)")
        if held:
            reranker.to(device).eval()
            before = stage.evaluate(reranker)
            reranker.train()
            print("before: " + ", ".join(f"{k} {v:.3f}" for k, v in before.items()))

    def save_fn(m: Reranker, path: Path, tokenizer, trainer_state: dict) -> None:
        m.save(path)
        torch.save(trainer_state, Path(path) / TRAINER_STATE)

    def load_fn(m: Reranker, path: Path) -> None:
        loaded = Reranker.load(path)
        m.load_state_dict(loaded.state_dict())

    summary = fit(reranker, stage, train, run, resume=resume, desc="rerank", save_fn=save_fn,
                  load_fn=load_fn)
    if not main:
        return summary
    path = reranker.save(run / "model")
    loss_curve(run / "metrics.jsonl", run / "loss.png", title="reranker training")
    after = {k: summary[k] for k in before if k in summary}
    write_json(run / "report.json", {"before": before, "after": after, "held_out_questions": len(stage.val_sets)})
    if after:
        print("after:  " + ", ".join(f"{k} {v:.3f}" for k, v in after.items()))
    print(f"done: {summary['steps']} steps, loss {summary['loss']:.3f}\nmodel: {path}  "
          f"report: {run / 'report.json'}  curve: {run / 'loss.png'}")
    return {**summary, "model": str(path), "before": before, "after": after}


def _head_missing(d: Path) -> bool:
    """Whether a folder has no one-label reranker head (then one starts new)."""
    try:
        model_type = json.loads((d / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, json.JSONDecodeError, AttributeError):
        return True  # Reranker.load says what is wrong with the folder
    out = head_names(model_type)[1] + ".weight"
    for f in d.glob("*.safetensors"):
        with safe_open(f, "pt") as st:  # the header only, no tensor read
            if out in st.keys():
                return st.get_slice(out).get_shape()[0] != 1
    return True
