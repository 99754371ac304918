"""Pictures people would rather look at than read: loss curves."""

from __future__ import annotations

import json
from pathlib import Path

from jielong.files import atomic_path

# Fonts with Chinese glyphs, tried after matplotlib's own for the characters it lacks
# (matplotlib >= 3.6 falls back through a family list glyph by glyph). Debian's
# fonts-wqy-microhei is what `make chromium` installs; the others are common elsewhere.
CJK_FONTS = ("WenQuanYi Micro Hei", "Noto Sans CJK SC", "Noto Sans CJK TC", "Source Han Sans SC",
             "Microsoft JhengHei", "Microsoft YaHei", "PingFang TC", "Heiti TC", "Arial Unicode MS")


def font_family() -> list[str]:
    """The family list for text that may be Chinese: DejaVu Sans, then each installed CJK font."""
    from matplotlib import font_manager

    have = {f.name for f in font_manager.fontManager.ttflist}
    return ["DejaVu Sans", *(f for f in CJK_FONTS if f in have)]


def loss_series(metrics: str | Path) -> dict:
    """What `loss_curve` draws, read from a metrics.jsonl: {"train": [(step, loss)], "val":
    [(step, val_loss)], "best": (step, val_loss) or None, "stopped_early": step or None}.

    The best is the one the loop recorded (early stopping's, which honours --min_delta) when
    the run logged it, else the lowest validation loss (the first of equals)."""
    rows = [json.loads(ln) for ln in Path(metrics).read_text().splitlines() if ln.strip()]
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    ends = [r for r in rows if "best_step" in r]
    if ends:
        best = (ends[-1]["best_step"], ends[-1]["best_val"])
    else:
        best = min(val, key=lambda sv: sv[1]) if val else None
    stopped = ends[-1]["step"] if ends and ends[-1].get("stopped_early") else None
    return {"train": train, "val": val, "best": best, "stopped_early": stopped}


def loss_curve(metrics: str | Path, png: str | Path, title: str = "training",
               baseline: float | None = None) -> Path:
    """Plot train loss and validation loss (at its steps, if logged) from a metrics.jsonl on
    one axes into a PNG, marking the best validation step (and where early stopping ended
    the run). Every stage that plots its loss calls this."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    draw_losses(ax, loss_series(metrics), baseline)
    ax.set_title(title)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(png)


def loss_panels(runs: list[tuple[str | Path, str]], png: str | Path, title: str = "") -> Path:
    """Several runs' `loss_curve`s side by side on one scale, one panel per (metrics.jsonl,
    panel title): e.g. one run that overfits, the same with early stopping, one on more data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 3.8), dpi=110, sharex=True,
                             sharey=True, squeeze=False)
    for ax, (metrics, name) in zip(axes[0], runs, strict=True):
        draw_losses(ax, loss_series(metrics))
        ax.set_title(name, fontsize=10)
        ax.legend(fontsize=7)
    for ax in axes[0][1:]:
        ax.set_ylabel("")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(png)


def draw_losses(ax, data: dict, baseline: float | None = None) -> None:
    """Train and validation loss of one `loss_series` on `ax`, the best step starred."""
    train, val, best = data["train"], data["val"], data["best"]
    if train:
        ax.plot(*zip(*train, strict=True), lw=1, alpha=0.8, label="train loss")
    if val:
        ax.plot(*zip(*val, strict=True), "o-", lw=2, ms=4, label="validation loss")
    if best is not None:
        ax.plot(*best, "*", ms=14, c="tab:red", zorder=5,
                label=f"best: step {best[0]} ({best[1]:.3f})")
    if data["stopped_early"] is not None:
        ax.axvline(data["stopped_early"], ls=":", c="grey", lw=1,
                   label=f"stopped early (step {data['stopped_early']})")
    if baseline is not None:
        ax.axhline(baseline, ls="--", c="grey", lw=1, label=f"unigram baseline ({baseline:.2f})")
    ax.set(xlabel="step", ylabel="cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()


def rl_curves(metrics: str | Path, png: str | Path, title: str = "RLHF") -> Path:
    """Plot an RL run's reward (sampled, and greedy on held-out prompts if logged), KL to the
    reference, and reply length with the share of replies that stopped by themselves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(ln) for ln in Path(metrics).read_text().splitlines() if ln.strip()]

    def series(key: str) -> list[tuple[int, float]]:
        return [(r["step"], r[key]) for r in rows if key in r]

    fig, (top, mid, low) = plt.subplots(3, 1, figsize=(7, 7.5), dpi=110, sharex=True)
    for key, label, style in (("reward", "reward (sampled)", "-"),
                              ("eval_reward", "reward (greedy, held-out)", "o-")):
        if series(key):
            top.plot(*zip(*series(key), strict=True), style, lw=1.2, ms=4, label=label)
    top.set(ylabel="reward", title=title)
    if series("kl"):
        mid.plot(*zip(*series("kl"), strict=True), lw=1.2, c="tab:red")
    mid.set(ylabel="KL to reference")
    if series("length"):
        low.plot(*zip(*series("length"), strict=True), lw=1.2, c="tab:green", label="reply length")
    low.set(xlabel="step")
    low.set_ylabel("reply length (tokens)", color="tab:green")
    if series("stopped"):
        share = low.twinx()
        share.plot(*zip(*series("stopped"), strict=True), lw=1, ls="--", c="tab:purple")
        share.set_ylim(-0.05, 1.05)
        share.set_ylabel("share stopped by itself", color="tab:purple")
    for ax in (top, mid, low):
        ax.grid(alpha=0.3)
    if top.get_legend_handles_labels()[0]:
        top.legend()
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(png)
