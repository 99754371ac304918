"""Pretraining: next-token prediction on a raw text corpus.

Run as:
    jielong pretrain corpus.jsonl --out runs/mine --preset demo --steps 2000
    jielong pretrain corpus.jsonl --out runs/mine --preset demo --steps 2000 --resume  # after a crash or Ctrl-C

Trains a tokenizer on the corpus unless `--tokenizer DIR` is given, tokenizes it once into
memory-mapped shards (RUN/data, reused while the inputs are unchanged), then runs the
shared loop. Writes RUN/model (an HF directory), RUN/metrics.jsonl and RUN/loss.png.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from jielong.checkpoint import save_model
from jielong.config import preset as preset_config
from jielong.data.readers import iter_texts
from jielong.data.shards import TokenShards, file_fingerprint, prepare_shards, read_meta
from jielong.errors import UserError
from jielong.model import Transformer
from jielong.plots import loss_curve
from jielong.runtime import init_distributed, is_main_process, main_process_first, pick_device
from jielong.tokenizer import Tokenizer, train_tokenizer
from jielong.train.loop import TrainConfig, context_length, fit
from jielong.train.losses import linear_cross_entropy


@torch.no_grad()
def evaluate_loss(model: Transformer, shards: TokenShards, batch_size: int = 16,
                  max_batches: int = 20) -> float:
    """Mean next-token cross-entropy (nats) over the first windows of a split."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for x, y in shards.sequential_batches(batch_size, max_batches):
        logits = model(x.to(device))
        total += F.cross_entropy(logits.flatten(0, 1).float(), y.to(device).flatten(),
                                 reduction="sum").item()
        count += y.numel()
    model.train(was_training)
    return total / count


@dataclass
class PretrainStage:
    """Random windows of packed documents; loss on every next token."""

    data_dir: Path
    seq_len: int
    batch_size: int
    seed: int
    eval_batches: int = 20
    world: int = 1  # processes: a batch is drawn by its global index (jielong.train.loop)

    def __post_init__(self):
        self.train = TokenShards(self.data_dir, "train", self.seq_len)
        try:
            self.val = TokenShards(self.data_dir, "val", self.seq_len)
        except UserError as e:
            raise UserError(f"{e}; or raise --val_fraction") from None

    def batch(self, step: int, micro: int, rank: int) -> dict[str, torch.Tensor]:
        g = micro * self.world + rank  # the same windows however the step is split
        x, y = self.train.random_batch(self.batch_size, self.seed, step, g, 0)
        return {"input_ids": x, "labels": y}

    def loss(self, model, batch) -> tuple[torch.Tensor, int]:
        hidden = model(batch["input_ids"], hidden_only=True)
        head = getattr(model, "module", model).lm_head  # unwrap DDP
        labels = batch["labels"]
        return linear_cross_entropy(hidden, head.weight, labels), labels.numel()

    def evaluate(self, model) -> dict[str, float]:
        return {"val_loss": evaluate_loss(model, self.val, self.batch_size, self.eval_batches)}


def prepare_tokenizer(data: list[str], run: Path, tokenizer: str | None, vocab_size: int,
                      field: str) -> tuple[Tokenizer, Path]:
    """The given tokenizer, else the run's own (trained on the corpus the first time)."""
    own = Path(tokenizer) if tokenizer else run / "tokenizer"
    if tokenizer or (own / "tokenizer_config.json").exists():
        return Tokenizer.from_dir(own), own
    print(f"training a {vocab_size}-token BPE tokenizer on the corpus")
    tok = train_tokenizer(iter_texts(data, field), vocab_size=vocab_size)
    tok.save(own)
    return tok, own


def prepare_data(data: list[str], tok: Tokenizer, tok_dir: Path, data_dir: Path, field: str,
                 val_fraction: float) -> dict:
    """Token shards for `data`, reused when the files, tokenizer and split are unchanged."""
    tok_hash = hashlib.sha256((tok_dir / "tokenizer.json").read_bytes()).hexdigest()
    fp = file_fingerprint(data, field, str(val_fraction), tok_hash)
    meta = read_meta(data_dir)
    if meta and meta.get("fingerprint") == fp:
        return meta
    return prepare_shards(iter_texts(data, field), tok, data_dir, val_fraction, fingerprint=fp)


def build_model(name: str, tok: Tokenizer, seq_len: int, seed: int) -> Transformer:
    cfg = preset_config(name, vocab_size=tok.vocab_size, eos_token_id=tok.eos_id, pad_token_id=tok.eos_id)
    context_length(seq_len, cfg.max_position_embeddings)
    torch.manual_seed(seed)
    return Transformer(cfg)


def pretrain(
    data: list[str],
    out: str = "runs/pretrain",
    tokenizer: str | None = None,
    vocab_size: int = 4096,
    preset: str = "demo",
    seq_len: int | None = None,
    field: str = "text",
    val_fraction: float = 0.01,
    resume: bool = False,
    train: TrainConfig = TrainConfig(),  # noqa: B008 (never mutated)
) -> dict:
    """Pretrain a model from scratch by next-token prediction.

    Args:
        data: Text files or folders (.txt, .jsonl, .parquet).
        out: Run directory (checkpoints, metrics.jsonl, loss.png, model/).
        tokenizer: A tokenizer directory; default: train one on `data` into OUT/tokenizer.
        vocab_size: Vocabulary size when training the tokenizer.
        preset: Model size: test, demo, 124m, 350m.
        seq_len: Tokens per training window (default: the preset's context).
        field: The text field of .jsonl/.parquet records.
        val_fraction: Share of documents held out for validation.
        resume: Continue from the last checkpoint in OUT.
        train: Optimisation settings (steps, batch size, learning rate, …).
    """
    train.validate()
    seq_len = context_length(seq_len, preset_config(preset).max_position_embeddings)  # before slow work
    run = Path(out)
    _, world = init_distributed(pick_device(train.device))  # under torchrun: rank 0 prepares the data
    with main_process_first():
        tok, tok_dir = prepare_tokenizer(data, run, tokenizer, vocab_size, field)
        meta = prepare_data(data, tok, tok_dir, run / "data", field, val_fraction)
    model = build_model(preset, tok, seq_len, train.seed)
    main = is_main_process()
    if main:
        print(f"model: {preset} preset, {model.config.num_params / 1e6:.2f}M parameters; data: "
              f"{sum(meta['train_sizes']):,} train / {sum(meta['val_sizes']):,} val tokens")
    stage = PretrainStage(run / "data", seq_len, train.batch_size, train.seed, world=world)
    summary = fit(model, stage, train, run, tokenizer=tok, resume=resume, desc="pretrain")
    if not main:
        return summary
    save_model(run / "model", model, tok)
    loss_curve(run / "metrics.jsonl", run / "loss.png", title=f"pretraining · {preset}")
    print(f"done: {summary['steps']} steps, loss {summary['loss']:.3f}, val_loss "
          f"{summary.get('val_loss', float('nan')):.3f}, {summary['tok_s']:,.0f} tokens/s\n"
          f"model: {run / 'model'}  curve: {run / 'loss.png'}  metrics: {run / 'metrics.jsonl'}")
    return summary
