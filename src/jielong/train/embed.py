"""Contrastive training of a text embedder for retrieval: questions pulled to their passages,
pushed from the other passages of the batch.

Run as:
    jielong train embed ../shared/data/drcd-dev.json --model models/bge-small-zh-v1.5 --out runs/embed
    jielong train embed pairs.jsonl --model runs/demo/model --out runs/embed-lm --steps 100

The loss is InfoNCE with in-batch negatives (van den Oord et al. 2018; DPR, Karpukhin et
al. 2020): for a batch of B questions and their B passages, all unit vectors, the logits
are q·pᵀ / τ and each question's answer is its own passage among the B — cross-entropy
over the rows, and with `--symmetric` over the columns too (each passage finds its
question). τ = 0.05 as SimCSE (Gao et al. 2021) and bge's fine-tuning (FlagEmbedding's
temperature 0.02–0.05) use: cosines live in [-1, 1], and a low temperature spreads them
over the softmax. Batches hold distinct passages (`jielong.train.pairs`), so no negative is
another copy of the answer.

The model is either a BERT / XLM-R folder through `jielong.encoder.Encoder` (pooled as its
sentence-transformers files say, or `--pooling`; vectors normalised) or a jielong / Hugging
Face causal LM, mean-pooled as /v1/embeddings does (`jielong.model.mean_pooled`). The
result, OUT/model, is read back by `jielong.rag.embed.load_embedder` (and an encoder's by
`Encoder.load`, transformers and sentence-transformers): the weights, the tokenizer,
modules.json + 1_Pooling/config.json + 2_Normalize, and — with `--query_prefix` — the
instruction in config_sentence_transformers.json's "prompts" (sentence-transformers' place
for it), which `load_embedder` applies to queries.

Data (`jielong.train.pairs`): SQuAD-style JSON (DRCD, CMRC 2018) or JSONL query/passage
lines. `--val_fraction` of the passages, with all their questions, are held out; recall@1,
recall@5 and MRR of each held-out question's passage among all held-out passages are
printed before and after training, and written to OUT/report.json.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from jielong.checkpoint import TRAINER_STATE, load_model, read_safetensors, save_model
from jielong.config import ARCHITECTURES
from jielong.encoder import MODEL_TYPES, Encoder, read_json
from jielong.errors import UserError
from jielong.files import write_json
from jielong.hub import resolve_model
from jielong.model import mean_pooled
from jielong.plots import loss_curve
from jielong.runtime import init_distributed, is_main_process, pick_device
from jielong.tokenizer import Tokenizer
from jielong.train.loop import TrainConfig, fit
from jielong.train.pairs import (
    PairBatches,
    Passage,
    held_out_queries,
    read_pairs,
    recall_at,
    same_passage,
    split_passages,
)

EMBED_TRAIN = TrainConfig(lr=2e-5, warmup_steps=10, steps=200, batch_size=32, eval_every=50,
                          save_every=100, weight_decay=0.01)  # `train embed` defaults
PROMPTS_FILE = "config_sentence_transformers.json"


# ---------------------------------------------------------------------------------- model


class Tower(nn.Module):
    """Texts to unit vectors, with gradients: an `Encoder` pooled its way, or a causal LM
    mean-pooled. Token ids come from `encode`; `forward(ids, lengths)` takes them right-padded."""

    def __init__(self, net: nn.Module, tokenizer: Tokenizer, max_len: int):
        super().__init__()
        self.net, self.tokenizer = net, tokenizer
        self.is_encoder = isinstance(net, Encoder)
        limit = net.config.max_tokens if self.is_encoder else net.config.max_position_embeddings
        self.max_len = min(max_len, limit)
        self.pad_id = net.config.pad_token_id if self.is_encoder else 0

    @classmethod
    def load(cls, path: str | Path, max_len: int, pooling: str | None = None) -> Tower:
        d = resolve_model(path)
        model_type = read_json(d / "config.json", "a model directory needs a config.json").get("model_type")
        if model_type in MODEL_TYPES:
            enc = Encoder.load(d, pooling=pooling, normalize=True)
            return cls(enc.train(), enc.tokenizer, max_len)
        if model_type in ARCHITECTURES:
            if pooling not in (None, "mean"):
                raise UserError(f"--pooling {pooling}: a decoder ({model_type}) is mean-pooled; "
                                "leave --pooling out")
            return cls(load_model(d), Tokenizer.from_dir(d), max_len)
        raise UserError(f"{d / 'config.json'}: model_type {model_type!r} is neither an encoder "
                        f"({', '.join(MODEL_TYPES)}) nor a decoder ({', '.join(ARCHITECTURES)})")

    def encode(self, texts: list[str]) -> list[list[int]]:
        texts = [t.strip() for t in texts]
        if not self.is_encoder:
            return [s[:self.max_len] for s in self.tokenizer.encode_batch(texts)]
        if self.net.lower_case:
            texts = [t.lower() for t in texts]
        backend = self.tokenizer.backend
        backend.no_padding()
        backend.enable_truncation(self.max_len)  # as Encoder.embed: [CLS]/[SEP] counted
        return [e.ids for e in backend.encode_batch(texts, add_special_tokens=True)]

    def pad(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.full((len(seqs), max(1, max(map(len, seqs)))), self.pad_id, dtype=torch.long)
        for r, s in enumerate(seqs):
            x[r, :len(s)] = torch.tensor(s, dtype=torch.long)
        return x, torch.tensor([len(s) for s in seqs])

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if not self.is_encoder:
            return mean_pooled(self.net, ids, lengths)
        mask = (torch.arange(ids.shape[1], device=ids.device) < lengths[:, None]).long()
        return F.normalize(self.net.pool(self.net(ids, mask), mask), dim=-1)

    @torch.no_grad()
    def vectors(self, seqs: list[list[int]], batch_size: int = 64) -> torch.Tensor:
        """(n, d) float32 on the CPU, batched by length."""
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        device = next(self.parameters()).device
        out = None
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            ids, lengths = self.pad([seqs[i] for i in rows])
            v = self(ids.to(device), lengths.to(device)).float().cpu()
            out = torch.empty(len(seqs), v.shape[1]) if out is None else out
            out[rows] = v
        return out

    def save(self, path: Path, trainer_state: dict | None = None, query_prefix: str = "") -> Path:
        if self.is_encoder:
            self.net.save(path)
        else:
            save_model(path, self.net, self.tokenizer)
        if trainer_state is not None:
            torch.save(trainer_state, path / TRAINER_STATE)
        if query_prefix:  # sentence-transformers' place for an instruction (its "prompts")
            write_json(path / PROMPTS_FILE, {"prompts": {"query": query_prefix, "document": ""},
                                             "default_prompt_name": None})
        return path

    def load_weights(self, path: Path) -> None:
        if self.is_encoder:
            state = {k: t.clone() for k, t in read_safetensors(path / "model.safetensors")}
            self.net.load_state_dict(state)
        else:
            self.net.load_state_dict(load_model(path).state_dict())


# ---------------------------------------------------------------------------------- stage


class EmbedStage:
    """The loop's stage: B distinct passages and a question of each; InfoNCE in the batch."""

    def __init__(self, tower: Tower, train: list[Passage], val: list[Passage], cfg: TrainConfig,
                 temperature: float, symmetric: bool, query_prefix: str = "", world: int = 1):
        self.tower, self.temperature, self.symmetric = tower, temperature, symmetric
        self.batches = PairBatches(train, cfg.batch_size, cfg.grad_accum, world, cfg.seed)
        self.p_ids = tower.encode([p.text for p in train])
        self.q_ids = [tower.encode([query_prefix + q for q in p.queries]) for p in train]
        self.val_p = tower.encode([p.text for p in val])
        qs, self.val_gold = held_out_queries(val)
        self.val_q = tower.encode([query_prefix + q for q in qs])
        self.eval_batch = cfg.batch_size

    def batch(self, step: int, micro: int, rank: int) -> dict[str, torch.Tensor]:
        idx, which = self.batches.draw(step, micro, rank)
        q, q_len = self.tower.pad([self.q_ids[i][j] for i, j in zip(idx, which, strict=True)])
        p, p_len = self.tower.pad([self.p_ids[i] for i in idx])
        return {"q": q, "q_len": q_len, "p": p, "p_len": p_len, "same": same_passage(idx)}

    def loss(self, model, batch) -> tuple[torch.Tensor, int]:
        q, p = model(batch["q"], batch["q_len"]), model(batch["p"], batch["p_len"])
        logits = (q.float() @ p.float().T / self.temperature).masked_fill(batch["same"], float("-inf"))
        target = torch.arange(len(q), device=q.device)
        loss = F.cross_entropy(logits, target)
        if self.symmetric:
            loss = (loss + F.cross_entropy(logits.T, target)) / 2
        return loss, int(batch["q_len"].sum() + batch["p_len"].sum())

    def evaluate(self, model) -> dict[str, float]:
        if not self.val_p:
            return {}
        q, p = model.vectors(self.val_q, self.eval_batch), model.vectors(self.val_p, self.eval_batch)
        scores = q @ p.T
        val_loss = F.cross_entropy(scores / self.temperature, torch.tensor(self.val_gold)).item()
        return {"val_loss": val_loss, **recall_at(np.asarray(scores), self.val_gold)}


# -------------------------------------------------------------------------------- command


def train_embed(
    data: str,
    model: str = "runs/demo/model",
    out: str = "runs/embed",
    val_fraction: float = 0.1,
    query_field: str = "query",
    passage_field: str = "passage",
    pooling: str | None = None,
    temperature: float = 0.05,
    symmetric: bool = False,
    query_prefix: str = "",
    max_len: int = 256,
    resume: bool = False,
    train: TrainConfig = EMBED_TRAIN,
) -> dict:
    """Train a retrieval embedder contrastively (in-batch negatives) on question–passage pairs.

    Args:
        data: SQuAD-style JSON (DRCD, CMRC 2018) or JSONL lines {"query": ..., "passage": ...}.
        model: A BERT / XLM-R encoder folder (bge-small-zh, text2vec, m3e, bge-m3) or a jielong / Hugging Face causal LM.
        out: Run directory (checkpoints, metrics.jsonl, loss.png, report.json, model/).
        val_fraction: Share of the passages held out, with their questions, for recall@1/5 before and after.
        query_field: The question field of a JSONL line.
        passage_field: The passage field of a JSONL line.
        pooling: Override an encoder's pooling: cls, mean, max or lasttoken (a decoder is mean-pooled).
        temperature: InfoNCE temperature τ (logits are cosine / τ).
        symmetric: Also score each passage against the batch's questions.
        query_prefix: An instruction put before every question (e.g. bge's 为这个句子生成表示以用于检索相关文章：), saved with the model.
        max_len: Tokens per text; longer texts keep their start.
        resume: Continue from the last checkpoint in OUT.
        train: Optimisation settings (steps, batch size, learning rate, …).
    """
    train.validate()
    if temperature <= 0:
        raise UserError(f"--temperature={temperature} must be positive (0.05 is usual)")
    if max_len < 2:
        raise UserError(f"--max_len={max_len} must be at least 2")
    passages = read_pairs(data, query_field, passage_field)
    kept, held = split_passages(passages, val_fraction, train.seed)
    device = pick_device(train.device)
    _, world = init_distributed(device)
    tower = Tower.load(model, max_len, pooling)
    stage = EmbedStage(tower, kept, held, train, temperature, symmetric, query_prefix, world)
    run, main = Path(out), is_main_process()
    before = {}
    if main:
        kind = f"encoder, {tower.net.pooling} pooling" if tower.is_encoder else "decoder, mean pooling"
        n_q = sum(len(p.queries) for p in kept)
        print(f"embed: {len(kept):,} passages / {n_q:,} questions to train on, {len(held):,} passages "
              f"held out; {stage.batches.sampler.epochs(train.steps):.1f} epochs of passages; "
              f"{sum(p.numel() for p in tower.parameters()) / 1e6:.3g}M parameters ({kind})")
        if held:
            tower.eval()
            before = stage.evaluate(tower.to(device))
            tower.train()
            print("before: " + ", ".join(f"{k} {v:.3f}" for k, v in before.items()))

    def save_fn(m: Tower, path: Path, tokenizer, trainer_state: dict) -> None:
        m.save(Path(path), trainer_state, query_prefix)

    def load_fn(m: Tower, path: Path) -> None:
        m.load_weights(Path(path))

    summary = fit(tower, stage, train, run, tokenizer=tower.tokenizer, resume=resume, desc="embed",
                  save_fn=save_fn, load_fn=load_fn)
    if not main:
        return summary
    path = tower.save(run / "model", query_prefix=query_prefix)
    loss_curve(run / "metrics.jsonl", run / "loss.png", title="contrastive embedding training")
    after = {k: summary[k] for k in before if k in summary}
    write_json(run / "report.json", {"before": before, "after": after, "held_out_passages": len(held),
                                     "held_out_questions": len(stage.val_gold)})
    if after:
        print("after:  " + ", ".join(f"{k} {v:.3f}" for k, v in after.items()))
    print(f"done: {summary['steps']} steps, loss {summary['loss']:.3f}\nmodel: {path}  "
          f"report: {run / 'report.json'}  curve: {run / 'loss.png'}")
    return {**summary, "model": str(path), "before": before, "after": after}
