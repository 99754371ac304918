"""The eval report's pictures: what a user would rather look at than read.

- scores.png: each task's headline scores side by side (acc and acc_norm for a benchmark, or
  whichever scores a task reports between 0 and 1), with the chance level of a
  multiple-choice task drawn as a dashed line, so "0.27 on CMMLU" is seen next to the 0.25 a
  coin would get;
- TASK.png, one per multiple-choice task: accuracy per category and per subject, as
  horizontal bars sorted from best to worst, with the chance line and each bar's question
  count (a subject of 5 questions is noise).

Drawn with matplotlib's object API (no global pyplot state: safe in a server or a test) and
written atomically; report.md links them.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from jielong.files import atomic_path
from jielong.plots import font_family

BLUE, ORANGE, GREY = "#4c72b0", "#dd8452", "#555555"
MAX_SUBJECTS = 80  # more bars than this and only the categories are drawn


def headline(task: dict) -> dict[str, float]:
    """The scores of a task worth a bar: acc and acc_norm, else every top-level number in
    [0, 1] that is a score (not a count, time or setting)."""
    if "acc" in task and "acc_norm" in task:
        return {"acc": task["acc"], "acc_norm": task["acc_norm"]}
    skip = {"n", "shots", "limit", "seconds", "subjects", "max_new_tokens"}
    return {k: v for k, v in task.items() if k not in skip and isinstance(v, (int, float))
            and not isinstance(v, bool) and 0 <= v <= 1}


def save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def scores_png(tasks: dict[str, dict], path: Path) -> Path:
    """One panel per task: its headline scores as bars, the chance level dashed."""
    fig = Figure(figsize=(max(4.0, 2.6 * len(tasks)), 3.4), dpi=110)
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    for ax, (name, t) in zip(axes, tasks.items(), strict=True):
        scores = headline(t)
        bars = ax.bar(range(len(scores)), list(scores.values()), color=BLUE)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
        ax.set_xticks(range(len(scores)), list(scores), fontsize=8)
        ax.set_ylim(0, 1.05)
        if t.get("chance"):
            ax.axhline(t["chance"], color=ORANGE, linestyle="--", linewidth=1,
                       label=f"chance {t['chance']:.2f}")
            ax.legend(fontsize=7, loc="upper right")
        ax.set_title(f"{name} (n={t.get('n', '?')})", fontsize=9, fontfamily=font_family())
        ax.grid(axis="y", alpha=0.3)
    return save(fig, path)


def breakdown_png(name: str, task: dict, path: Path) -> Path:
    """Accuracy per category (top) and per subject (below, when not too many), best first."""
    groups = [("category", task.get("categories", {}))]
    if len(task.get("subjects", {})) <= MAX_SUBJECTS:
        groups.append(("subject", task["subjects"]))
    heights = [max(1.2, 0.22 * len(g) + 0.8) for _, g in groups]
    fig = Figure(figsize=(7.0, sum(heights)), dpi=110)
    axes = fig.subplots(len(groups), 1, squeeze=False, height_ratios=heights)[:, 0]
    for ax, (kind, rows) in zip(axes, groups, strict=True):
        items = sorted(rows.items(), key=lambda kv: kv[1]["acc"])
        y = range(len(items))
        ax.barh(y, [r["acc"] for _, r in items], color=BLUE if kind == "category" else GREY)
        ax.set_yticks(y, [f"{k} ({r['n']})" for k, r in items], fontsize=7, fontfamily=font_family())
        ax.set_xlim(0, 1)
        if task.get("chance"):
            ax.axvline(task["chance"], color=ORANGE, linestyle="--", linewidth=1)
        ax.set_title(f"{name}: acc per {kind} (questions), dashed: chance", fontsize=9,
                     fontfamily=font_family())
        ax.grid(axis="x", alpha=0.3)
    return save(fig, path)


def report_charts(results: dict, out_dir: Path) -> list[str]:
    """Draw the report's charts into out_dir; their file names, for report.md to link."""
    tasks = results.get("tasks", {})
    if not tasks:
        return []
    names = [scores_png(tasks, out_dir / "scores.png").name]
    for name, t in tasks.items():
        if t.get("categories") or t.get("subjects"):
            names.append(breakdown_png(name, t, out_dir / f"{safe(name)}.png").name)
    return names


def safe(name: str) -> str:
    """A task name as a file name (a folder path given as a task becomes its last part)."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(name).name) or "task"
