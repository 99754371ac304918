"""Scaling in miniature: train a grid of model sizes × token budgets, fit a power law.

Run as:
    jielong sweep corpus.jsonl --out runs/sweep --preset test --grid "n_layer=1,2;hidden=32,64" --steps "50,100"
    jielong sweep corpus.jsonl --out runs/lr --preset test --grid "lr=1e-4,1e-3,1e-2" --steps 100  # 調參數: tuning

GPT-1 → GPT-3 grew parameters and data together; Kaplan et al. (2020, "Scaling Laws for
Neural Language Models") measured that the loss then falls as a power of the compute,
L(C) = a·C^(−b) + c, where c is the loss no model can beat (the text's own entropy).
Each grid point is trained by the pretraining stage's own pieces (its tokenizer, token
shards, `PretrainStage` and the shared loop `fit`) on one tokenizer and one set of shards
for all points; a model key of the grid overrides the preset's field. Compute is
C = 6·N·D FLOPs (Kaplan's estimate: 2 for the forward pass, 4 for the backward), N the
non-embedding parameters as Kaplan counts them, D the tokens trained on.

The fit is numpy only. Pure power law (c fixed, 0 by default when given): a straight line
through (log C, log(L − c)). Offset form: for each exponent b on a grid, L is linear in
(a, c), solved by least squares; the grid zooms in three times around the best b, so the
result is the least-squares fit in loss units (not log units) to a few digits. We fit the
compute frontier (runs no cheaper run beats), as Kaplan fits L(C) to the best model at each
compute, when it has at least 3 points, else every run; the offset form needs 4.

Any training option (lr, batch_size, warmup_steps, …) can be a grid key too; every key with
several values gets a plot of the final loss against it, one line per setting of the rest,
so a learner sees which learning rate diverged and which one was too timid.

Writes OUT/sweep.json (every run and the fit), OUT/loss_vs_compute.png, OUT/loss_vs_KEY.png
and OUT/runs/NAME/ (each run's metrics.jsonl and result.json; a run already done is reused).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from jielong.config import ModelConfig
from jielong.config import preset as preset_config
from jielong.errors import UserError
from jielong.files import atomic_path, write_json
from jielong.model import Transformer
from jielong.plots import font_family
from jielong.runtime import pick_device
from jielong.train.loop import TrainConfig, context_length, fit
from jielong.train.pretrain import PretrainStage, prepare_data, prepare_tokenizer

# Short grid names for the model fields people sweep (any ModelConfig field works as well).
ALIASES = {"n_layer": "num_hidden_layers", "layers": "num_hidden_layers", "hidden": "hidden_size",
           "n_embd": "hidden_size", "heads": "num_attention_heads", "n_head": "num_attention_heads",
           "kv_heads": "num_key_value_heads", "intermediate": "intermediate_size"}
MODEL_KEYS = {f.name for f in dataclasses.fields(ModelConfig)} - {"vocab_size", "eos_token_id",
                                                                  "pad_token_id", "bos_token_id"}
TRAIN_KEYS = {f.name for f in dataclasses.fields(TrainConfig)} - {"steps", "device"}


@dataclass
class PowerLaw:
    """L(C) = a·C^(−b) + c, fitted to `n` points with residual sum of squares `rss`."""

    a: float
    b: float
    c: float
    rss: float
    n: int
    method: str

    def __call__(self, compute):
        return self.a * np.asarray(compute, dtype=float) ** (-self.b) + self.c

    def describe(self) -> str:
        offset = f" + {self.c:.3f}" if self.c else ""
        return f"L = {self.a:.3g}·C^({-self.b:.3f}){offset}"


def fit_power_law(compute, loss, c: float | None = None) -> PowerLaw:
    """Fit L = a·C^(−b) + c to points (compute, loss): with `c` given (0 for a pure power law)
    a log-linear fit of L − c; with c None, least squares over (a, c) at each b of a zooming
    grid (0 ≤ c < min L)."""
    C, L = np.asarray(compute, dtype=float), np.asarray(loss, dtype=float)
    if C.shape != L.shape or C.ndim != 1 or len(C) < (2 if c is not None else 3):
        raise UserError(f"a power-law fit needs at least {2 if c is not None else 3} (compute, loss) "
                        f"points of equal count, got {C.size} and {L.size}")
    if (C <= 0).any() or not np.isfinite(L).all():
        raise UserError("a power-law fit needs positive compute and finite losses")
    x = np.log(C / np.exp(np.log(C).mean()))  # centred: C^(−b) stays near 1 for any b
    scale = np.exp(np.log(C).mean())
    if c is not None:
        if (L <= c).any():
            raise UserError(f"a fixed offset c={c} must lie below every loss (the lowest is {L.min():.4g})")
        slope, icept = np.polyfit(x, np.log(L - c), 1)
        a, b = math.exp(icept) * scale ** (-slope), -slope
        return PowerLaw(a, b, c, float(((a * C ** -b + c - L) ** 2).sum()), len(C), "log-linear")

    def solve(b: float) -> tuple[float, float, float]:
        basis = np.exp(-b * x)
        A = np.stack([basis, np.ones_like(basis)], 1)
        (a, off), *_ = np.linalg.lstsq(A, L, rcond=None)
        if off < 0 or off >= L.min():  # keep c a floor below the data: refit with c at the bound
            off = min(max(off, 0.0), L.min() * (1 - 1e-9))
            a = float(basis @ (L - off) / (basis @ basis))
        return float(((a * basis + off - L) ** 2).sum()), a, off

    lo, hi = 1e-4, 3.0  # exponents of loss in compute are ~0.05 (Kaplan) to ~0.5 on tiny runs
    for _ in range(4):
        grid = np.linspace(lo, hi, 201)
        i = int(np.argmin([solve(b)[0] for b in grid]))
        step = grid[1] - grid[0]
        lo, hi = max(grid[i] - step, 1e-6), grid[i] + step
    b = float(grid[i])
    rss, a, off = solve(b)
    return PowerLaw(a * scale ** b, b, off, rss, len(C), "least squares over (a, c), grid over b")


def _value(text: str, where: str):
    text = text.strip()
    if not text:
        raise UserError(f"{where}: an empty value; write values as n_layer=1,2")
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_grid(grid: str) -> dict[str, list]:
    """"n_layer=1,2;lr=1e-3,3e-3" → {"num_hidden_layers": [1, 2], "lr": [0.001, 0.003]}: keys
    are ModelConfig or TrainConfig fields (or the short names in ALIASES)."""
    out: dict[str, list] = {}
    for part in (p.strip() for p in grid.split(";")):
        if not part:
            continue
        key, eq, values = part.partition("=")
        key = ALIASES.get(key.strip(), key.strip())
        if not eq:
            raise UserError(f"--grid: {part!r} has no '='; write KEY=V1,V2;KEY=V1,…")
        if key == "steps":
            raise UserError("--grid: give token budgets with --steps 50,100, not as a grid key")
        if key not in MODEL_KEYS | TRAIN_KEYS:
            raise UserError(f"--grid: unknown key {key!r}; use a model field ({', '.join(sorted(ALIASES))}, "
                            f"or any config.json field) or a training option (lr, batch_size, warmup_steps, …)")
        if key in out:
            raise UserError(f"--grid: {key!r} is given twice")
        out[key] = [_value(v, f"--grid {key}") for v in values.split(",")]
    return out


def parse_steps(steps: str) -> list[int]:
    try:
        out = [int(s) for s in steps.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--steps {steps!r}: write whole step counts separated by commas, e.g. 50,100") from None
    if not out or min(out) <= 0:
        raise UserError(f"--steps {steps!r}: give at least one positive step count")
    return out


def model_config(preset: str, overrides: dict, vocab: int, eos: int) -> ModelConfig:
    """The preset with the grid's model fields; a new width keeps the preset's MLP ratio."""
    base = preset_config(preset)
    if "hidden_size" in overrides and "intermediate_size" not in overrides:
        overrides = {**overrides, "intermediate_size":
                     round(base.intermediate_size / base.hidden_size * overrides["hidden_size"])}
    return preset_config(preset, **overrides, vocab_size=vocab, eos_token_id=eos, pad_token_id=eos)


def run_name(point: dict) -> str:
    return "_".join(f"{k}-{v}" for k, v in point.items())


def sweep(data: list[str], out: str = "runs/sweep", preset: str = "test",
          grid: str = "n_layer=1,2;hidden=32,64", steps: str = "50,100,200",
          tokenizer: str | None = None, vocab_size: int = 1024, seq_len: int = 64,
          batch_size: int = 16, lr: float = 3e-3, warmup_steps: int = 10, field: str = "text",
          val_fraction: float = 0.05, device: str = "auto", seed: int = 1337) -> dict:
    """Train a grid of model sizes × step budgets (or training options), fit a power law of the
    final validation loss in compute, and plot it.

    Args:
        data: Text files or folders (.txt, .jsonl, .parquet).
        out: Sweep folder (sweep.json, loss_vs_compute.png, runs/).
        preset: The model size each grid point starts from: test, demo, 124m, 350m.
        grid: KEY=V1,V2;KEY=… over model fields (n_layer, hidden, heads, kv_heads, intermediate) and training options (lr, batch_size, warmup_steps, schedule, weight_decay, …).
        steps: Step budgets, comma-separated; each grid point is trained for each.
        tokenizer: A tokenizer directory; default: train one on `data` into OUT/tokenizer.
        vocab_size: Vocabulary size when training the tokenizer.
        seq_len: Tokens per training window.
        batch_size: Sequences per step (unless the grid sweeps it).
        lr: Peak learning rate (unless the grid sweeps it).
        warmup_steps: Linear warmup steps (unless the grid sweeps it).
        field: The text field of .jsonl/.parquet records.
        val_fraction: Share of documents held out for the validation loss.
        device: auto, cpu, cuda, cuda:N or mps.
        seed: Seed for initialisation and data order (the same for every point).
    """
    axes = parse_grid(grid)
    budgets = parse_steps(steps)
    for key, values in axes.items():  # a bad model field fails now, not after an hour of training
        if key in MODEL_KEYS:
            for v in values:
                model_config(preset, {key: v}, 256, 0)
    context_length(seq_len, preset_config(preset).max_position_embeddings)
    pick_device(device)  # a missing GPU is told now, before the tokenizer and shards
    root = Path(out)
    tok, tok_dir = prepare_tokenizer(data, root, tokenizer, vocab_size, field)
    prepare_data(data, tok, tok_dir, root / "data", field, val_fraction)
    points = [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]
    runs = []
    for i, (point, n_steps) in enumerate(itertools.product(points, budgets)):
        name = run_name({**point, "steps": n_steps})
        runs.append(train_point(root / "runs" / name, name, point, n_steps, preset, tok, root / "data",
                                seq_len, dict(batch_size=batch_size, lr=lr, warmup_steps=warmup_steps,
                                              seed=seed, device=device), f"{i + 1}/{len(points) * len(budgets)}"))
    result = {"preset": preset, "grid": axes, "steps": budgets, "runs": runs}
    frontier = compute_frontier(runs)
    used = frontier if len(frontier) >= 3 else runs
    law = None
    if len(used) >= 2 and len({r["compute"] for r in used}) >= 2:
        law = fit_power_law([r["compute"] for r in used], [r["val_loss"] for r in used],
                            c=None if len(used) >= 4 else 0.0)
        result["fit"] = {**dataclasses.asdict(law), "points": "frontier" if used is frontier else "all",
                         "law": law.describe()}
    write_json(root / "sweep.json", result)
    plot_compute(runs, used, law, root / "loss_vs_compute.png", preset)
    for key, values in axes.items():
        if len(values) > 1:
            plot_option(runs, key, root / f"loss_vs_{key}.png")
    print(f"{len(runs)} runs; " + (f"fit on {len(used)} points: {law.describe()}" if law else
                                   "too few distinct computes to fit a power law") +
          f"\nresults: {root / 'sweep.json'}  plot: {root / 'loss_vs_compute.png'}")
    return result


def train_point(run: Path, name: str, point: dict, n_steps: int, preset: str, tok, data_dir: Path,
                seq_len: int, base: dict, progress: str) -> dict:
    """One grid point trained from scratch, or its result.json when an earlier sweep did it."""
    done = run / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    model_part = {k: v for k, v in point.items() if k in MODEL_KEYS}
    train_part = {k: v for k, v in point.items() if k in TRAIN_KEYS}
    cfg = model_config(preset, model_part, tok.vocab_size, tok.eos_id)
    train = TrainConfig(**{**base, **train_part, "steps": n_steps, "eval_every": n_steps,
                           "save_every": n_steps, "keep_checkpoints": 1})
    train.validate()
    torch.manual_seed(train.seed)
    model = Transformer(cfg)
    stage = PretrainStage(data_dir, seq_len, train.batch_size, train.seed)
    summary = fit(model, stage, train, run, tokenizer=tok, desc=f"sweep {progress} {name}")
    embedding = cfg.vocab_size * cfg.hidden_size * (1 if cfg.tie_word_embeddings else 2)
    n = cfg.num_params - embedding
    row = {"name": name, **point, "steps": n_steps, "params": cfg.num_params,
           "non_embedding_params": n, "tokens": summary["tokens"],
           "compute": 6 * n * summary["tokens"], "val_loss": summary.get("val_loss", float("nan")),
           "train_loss": summary["loss"]}
    write_json(done, row)
    return row


def compute_frontier(runs: list[dict]) -> list[dict]:
    """The runs no run of less or equal compute beats: the best loss bought at each compute."""
    best, out = math.inf, []
    for r in sorted(runs, key=lambda r: (r["compute"], r["val_loss"])):
        if r["val_loss"] < best:
            best = r["val_loss"]
            out.append(r)
    return out


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, png: Path) -> None:
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png")
    _pyplot().close(fig)


def plot_compute(runs: list[dict], used: list[dict], law: PowerLaw | None, png: Path, preset: str) -> Path:
    """Loss against compute (log-log), a line per model through its step budgets, the fit dashed."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    groups: dict[str, list[dict]] = {}
    for r in runs:
        key = ", ".join(f"{k}={r[k]}" for k in r if k not in
                        {"name", "steps", "params", "non_embedding_params", "tokens", "compute",
                         "val_loss", "train_loss"})
        groups.setdefault(key or preset, []).append(r)
    for label, rs in groups.items():
        rs = sorted(rs, key=lambda r: r["compute"])
        ax.plot([r["compute"] for r in rs], [r["val_loss"] for r in rs], "o-", ms=5, lw=1.2,
                label=f"{label} ({rs[0]['non_embedding_params'] / 1e3:.0f}k params)")
    if law is not None:
        C = np.geomspace(min(r["compute"] for r in used), max(r["compute"] for r in used), 100)
        ax.plot(C, law(C), "k--", lw=1.5, label=f"fit: {law.describe()}")
    ax.set(xscale="log", yscale="log", xlabel="compute: 6·N·D FLOPs (N non-embedding)",
           ylabel="final validation loss (nats/token)", title=f"scaling in miniature · {preset}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, prop={"family": font_family(), "size": 7})
    _save(fig, png)
    return png


def plot_option(runs: list[dict], key: str, png: Path) -> Path:
    """Final validation loss against one grid key, a line per setting of the other keys."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=110)
    lines: dict[str, list[dict]] = {}
    for r in runs:
        others = ", ".join(f"{k}={r[k]}" for k in r if k not in
                           {"name", key, "params", "non_embedding_params", "tokens", "compute",
                            "val_loss", "train_loss"})
        lines.setdefault(others, []).append(r)
    numeric = all(isinstance(r[key], int | float) and not isinstance(r[key], bool) for r in runs)
    for label, rs in lines.items():
        rs = sorted(rs, key=lambda r: r[key]) if numeric else rs
        ax.plot([r[key] if numeric else str(r[key]) for r in rs], [r["val_loss"] for r in rs],
                "o-", ms=5, label=label)
    values = [r[key] for r in runs]
    if numeric and min(values) > 0 and max(values) / min(values) >= 10:
        ax.set_xscale("log")  # learning rates, batch sizes: a factor apart, not a sum
    ax.set(xlabel=key, ylabel="final validation loss (nats/token)", title=f"loss vs {key}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, png)
    return png
