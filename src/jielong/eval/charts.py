"""The eval report's pictures: what a user would rather look at than read.

- scores.png: each task's headline scores side by side (acc and acc_norm for a benchmark, a
  generation task's own: EM and F1, BLEU and chrF, ROUGE-L (these five / 100), accuracy,
  macro-F1, refusal and hallucination rates), with the chance level of a
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

from jielong.eval.generation import HEADLINE, HUNDREDS
from jielong.files import atomic_path
from jielong.plots import font_family

BLUE, ORANGE, GREY = "#4c72b0", "#dd8452", "#555555"
MAX_SUBJECTS = 80  # more bars than this and only the categories are drawn


def headline(task: dict) -> dict[str, tuple[float, str]]:
    """The scores of a task worth a bar: {name: (height on a 0-1 scale, the score as shown)}:
    acc and acc_norm of a benchmark scored by log-likelihood; a generation task's headline
    scores (jielong.eval.generation; EM, F1, BLEU, chrF and ROUGE-L are 0-100 scores, drawn
    at a hundredth of their height and named so)."""
    if "kind" not in task:
        return {m: (task[m], f"{task[m]:.3f}") for m in ("acc", "acc_norm")}
    return {f"{name} (0-100)" if key in HUNDREDS else name:
            (task[key] / 100, f"{task[key]:.1f}") if key in HUNDREDS else (task[key], f"{task[key]:.3f}")
            for key, name in HEADLINE[task["kind"]]}


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
        bars = ax.bar(range(len(scores)), [h for h, _ in scores.values()], color=BLUE)
        ax.bar_label(bars, labels=[shown for _, shown in scores.values()], fontsize=7)
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
    tasks = {**results.get("tasks", {}), **results.get("generate", {})}
    if not tasks:
        return []
    names = [scores_png(tasks, out_dir / "scores.png").name]
    for name, t in tasks.items():
        if "kind" not in t and (t.get("categories") or t.get("subjects")):
            names.append(breakdown_png(name, t, out_dir / f"{safe(name)}.png").name)
    return names


def safe(name: str) -> str:
    """A task name as a file name (a folder path given as a task becomes its last part)."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(name).name) or "task"
