"""Pictures people would rather look at than read: loss curves."""

from __future__ import annotations

import json
from pathlib import Path

from jielong.files import atomic_path


def loss_curve(metrics: str | Path, png: str | Path, title: str = "training",
               baseline: float | None = None) -> Path:
    """Plot train loss (and val loss, if logged) from a metrics.jsonl into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(ln) for ln in Path(metrics).read_text().splitlines() if ln.strip()]
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train, strict=True), lw=1, alpha=0.8, label="train loss")
    if val:
        ax.plot(*zip(*val, strict=True), "o-", lw=2, ms=4, label="validation loss")
    if baseline is not None:
        ax.axhline(baseline, ls="--", c="grey", lw=1, label=f"unigram baseline ({baseline:.2f})")
    ax.set(xlabel="step", ylabel="cross-entropy (nats/token)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(png)
