"""`jielong eval compare`: several evaluated models side by side (base, SFT, LoRA, aligned …),
each score with its difference from the first run and a paired bootstrap 95% interval of
that difference, so a user sees which differences are larger than the noise of a small test.

Run as:
    jielong eval compare runs/eval/base runs/eval/sft runs/eval/aligned --out runs/eval/compare

Each RUN is a folder `jielong eval` wrote (results.json and samples.jsonl). Runs are paired
question by question (the same task file and line) and document by document (the same
--text files): a bootstrap sample draws questions (documents) with replacement and takes
the difference of the two models' score on the same draw, 2,000 times by default; the
2.5th and 97.5th percentiles are the interval (Efron & Tibshirani's percentile bootstrap,
paired as in Koehn 2004 for machine translation). An interval that holds 0 means the data
cannot tell the two apart. Scores: acc and acc_norm per multiple-choice task; bits per byte
on held-out text (lower is better; the bootstrap recomputes the ratio of sums on each draw);
and each generation task's per-answer scores (`GENERATED`: EM and F1, accuracy, macro-F1
recomputed on every draw, ROUGE-L, the hallucination rate (lower is better), and for
translation the mean sentence chrF — corpus BLEU and chrF pool n-gram counts over all
sentences, so they are not a mean a paired draw can take apart cheaply).

Writes OUT/compare.json, OUT/compare.md (the table) and OUT/compare.png (each run's scores
with their own 95% intervals).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from jielong.errors import UserError, at
from jielong.files import atomic_path, write_json, write_text

METRICS = ("acc", "acc_norm")


def macro_f1(gold: np.ndarray, pred: np.ndarray) -> float:
    """The mean F1 over the classes in `gold` (labels as integers; -1: no answer)."""
    f1s = []
    for c in np.unique(gold):
        tp = np.sum((pred == c) & (gold == c))
        denom = np.sum(pred == c) + np.sum(gold == c)
        f1s.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(f1s))


def mean(c: np.ndarray) -> float:
    return float(c.mean())


# A generation task's scores compared per answer (jielong.eval.generation's samples.jsonl rows):
# kind -> [(name, per-row value, statistic over the rows, scale, higher is better)].
GENERATED = {
    "choice": [("acc", lambda r: r["acc"], mean, 1, True)],
    "squad": [("EM", lambda r: r["em"], mean, 100, True), ("F1", lambda r: r["f1"], mean, 100, True)],
    "translate": [("chrF (mean of sentences)", lambda r: r["chrf"], mean, 1, True)],
    "summarize": [("ROUGE-L", lambda r: r["rouge_l"], mean, 100, True)],
    "classify": [("accuracy", lambda r: r["correct"], mean, 1, True)],
    "closedbook": [("accuracy", lambda r: r["verdict"] == "correct", mean, 1, True),
                   ("hallucination rate", lambda r: r["verdict"] == "wrong", mean, 1, False)],
}


def read_run(path: str | Path) -> tuple[dict, list[dict]]:
    """(results.json, the rows of samples.jsonl) of one `jielong eval` output folder."""
    d = Path(path)
    if not (d / "results.json").is_file() or not (d / "samples.jsonl").is_file():
        raise UserError(f"{d}: not a `jielong eval` output folder (results.json and samples.jsonl "
                        "expected); run `jielong eval MODEL … --out` first")
    results = json.loads((d / "results.json").read_text(encoding="utf-8"))
    rows = []
    for n, line in enumerate((d / "samples.jsonl").read_text(encoding="utf-8").splitlines(), 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise UserError(f"{at(d / 'samples.jsonl', n)}: not valid JSON ({e.msg})") from None
    return results, rows


def paired(runs: list[list[dict]], task: str, key: str) -> list[list[dict]]:
    """Each run's rows of `task`, in one order, only the items every run has."""
    keyed = [{r[key]: r for r in rows if r["task"] == task} for rows in runs]
    common = [k for k in keyed[0] if all(k in other for other in keyed[1:])]
    return [[run[k] for k in common] for run in keyed]


def bootstrap(stat, columns: list[np.ndarray], samples: int, seed: int) -> np.ndarray:
    """stat(*columns) on `samples` resamplings of the rows (with replacement), paired: each
    draw takes the same rows from every column."""
    n = len(columns[0])
    draws = np.random.default_rng(seed).integers(0, n, size=(samples, n))
    return np.array([stat(*(c[i] for c in columns)) for i in draws])


def interval(values: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def bits_per_byte(nll: np.ndarray, n_bytes: np.ndarray) -> float:
    return float(nll.sum() / math.log(2) / n_bytes.sum())


def compare_runs(paths: list[str], samples: int = 2000, seed: int = 0) -> dict:
    """Scores of every run on what all runs share, each run's difference from the first,
    with 95% bootstrap intervals (of the score, and of the paired difference)."""
    loaded = [read_run(p) for p in paths]
    names = [str(p) for p in paths]
    rows = [r for _, r in loaded]
    out = {"runs": names, "models": [res.get("model", "") for res, _ in loaded], "bootstrap": samples,
           "scores": []}
    tasks = [t for t in loaded[0][0].get("tasks", {}) if all(t in res.get("tasks", {}) for res, _ in loaded)]
    for task in tasks:
        items = paired(rows, task, "where")
        if not items[0]:
            continue
        for metric in METRICS:
            cols = [np.array([r[metric] for r in run], dtype=float) for run in items]
            out["scores"].append(score_row(f"{task} {metric}", cols, lambda c: float(c.mean()),
                                           True, samples, seed))
    generated = [t for t, v in loaded[0][0].get("generate", {}).items()
                 if all(t in res.get("generate", {}) for res, _ in loaded)]
    for task in generated:
        items = paired(rows, task, "where")
        kind = loaded[0][0]["generate"][task]["kind"]
        if not items[0]:
            continue
        for metric, value, stat, scale, higher in GENERATED[kind]:
            cols = [np.array([float(value(r)) * scale for r in run]) for run in items]
            out["scores"].append(score_row(f"{task} {metric}", cols, stat, higher, samples, seed))
        if kind == "classify":  # labels as integers, macro-F1 recomputed on every paired draw
            labels = {lab: i for i, lab in enumerate(loaded[0][0]["generate"][task]["labels"])}
            gold = np.array([labels.get(r["label"], -1) for r in items[0]])
            preds = [np.array([labels.get(r["pred"], -1) if r["pred"] is not None else -1
                               for r in run]) for run in items]
            out["scores"].append(classify_row(f"{task} macro-F1", gold, preds, samples, seed))
    texts = [res.get("text", {}).get("files") for res, _ in loaded]
    if texts[0] and all(t == texts[0] for t in texts):
        docs = paired(rows, "text", "document")
        cols = [(np.array([r["nll"] for r in run]), np.array([r["bytes"] for r in run], dtype=float))
                for run in docs]
        out["scores"].append(text_row(cols, samples, seed))
    if not out["scores"]:
        raise UserError(f"{', '.join(names)}: these runs share no task and no --text files; "
                        "compare runs of the same benchmarks")
    return out


def score_row(name: str, cols: list[np.ndarray], stat, higher_better: bool, samples: int,
              seed: int) -> dict:
    """One score of every run: value, own interval, and the paired difference from run 0."""
    row = {"score": name, "n": len(cols[0]), "higher_is_better": higher_better, "runs": []}
    for i, c in enumerate(cols):
        entry = {"value": stat(c), "ci": interval(bootstrap(stat, [c], samples, seed))}
        if i:
            diff = bootstrap(lambda a, b: stat(b) - stat(a), [cols[0], c], samples, seed)
            entry["diff"] = stat(c) - stat(cols[0])
            entry["diff_ci"] = interval(diff)
        row["runs"].append(entry)
    return row


def classify_row(name: str, gold: np.ndarray, preds: list[np.ndarray], samples: int,
                 seed: int) -> dict:
    """macro-F1 of every run, its interval, and the paired difference from run 0: each draw
    takes the same questions (their gold labels and every run's answers) and recomputes it."""
    row = {"score": name, "n": len(gold), "higher_is_better": True, "runs": []}
    for i, p in enumerate(preds):
        entry = {"value": macro_f1(gold, p), "ci": interval(bootstrap(macro_f1, [gold, p], samples, seed))}
        if i:
            entry["diff"] = entry["value"] - macro_f1(gold, preds[0])
            entry["diff_ci"] = interval(bootstrap(lambda g, a, b: macro_f1(g, b) - macro_f1(g, a),
                                                  [gold, preds[0], p], samples, seed))
        row["runs"].append(entry)
    return row


def text_row(cols: list[tuple[np.ndarray, np.ndarray]], samples: int, seed: int) -> dict:
    row = {"score": "held-out bits per byte", "n": len(cols[0][0]), "higher_is_better": False,
           "runs": []}
    base_nll, base_bytes = cols[0]
    for i, (nll, n_bytes) in enumerate(cols):
        entry = {"value": bits_per_byte(nll, n_bytes),
                 "ci": interval(bootstrap(bits_per_byte, [nll, n_bytes], samples, seed))}
        if i:
            def diff(a_nll, a_bytes, b_nll, b_bytes):
                return bits_per_byte(b_nll, b_bytes) - bits_per_byte(a_nll, a_bytes)

            entry["diff"] = entry["value"] - bits_per_byte(base_nll, base_bytes)
            entry["diff_ci"] = interval(bootstrap(diff, [base_nll, base_bytes, nll, n_bytes],
                                                  samples, seed))
        row["runs"].append(entry)
    return row


def verdict(entry: dict, higher_better: bool) -> str:
    lo, hi = entry["diff_ci"]
    if lo <= 0 <= hi:
        return "within noise"
    return "better" if (lo > 0) == higher_better else "worse"


def compare_md(result: dict) -> str:
    runs = result["runs"]
    head = ["score", "n"] + [f"run {i + 1}" for i in range(len(runs))] + \
        [f"run {i + 1} − run 1 [95% CI]" for i in range(1, len(runs))]
    lines = ["# Evaluation compared", ""]
    lines += [f"- run {i + 1}: `{r}` ({m})" for i, (r, m) in enumerate(zip(runs, result["models"],
                                                                           strict=True))]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result["scores"]:
        cells = [row["score"], str(row["n"])]
        cells += [f"{e['value']:.4f}" for e in row["runs"]]
        cells += [f"{e['diff']:+.4f} [{e['diff_ci'][0]:+.4f}, {e['diff_ci'][1]:+.4f}] "
                  f"{verdict(e, row['higher_is_better'])}" for e in row["runs"][1:]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Intervals: paired percentile bootstrap, {result['bootstrap']} resamplings of the "
              "questions (documents); an interval holding 0 is within noise. Bits per byte and the "
              "hallucination rate: lower is better.", ""]
    return "\n".join(lines)


def compare_png(result: dict, path: Path) -> Path:
    rows = result["scores"]
    fig = Figure(figsize=(max(5.0, 1.6 * len(rows) * len(result["runs"]) / 2 + 2), 3.8), dpi=110)
    axes = fig.subplots(1, len(rows), squeeze=False)[0]
    for ax, row in zip(axes, rows, strict=True):
        values = [e["value"] for e in row["runs"]]
        err = np.array([[e["value"] - e["ci"][0], e["ci"][1] - e["value"]] for e in row["runs"]]).T
        ax.bar(range(len(values)), values, yerr=err, capsize=4, color="#4c72b0")
        ax.set_xticks(range(len(values)), [f"run {i + 1}" for i in range(len(values))])
        ax.set_title(row["score"], fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def compare_cmd(runs: list[str], out: str = "runs/eval/compare", samples: int = 2000,
                seed: int = 0) -> dict:
    """Put several `jielong eval` runs side by side, with bootstrap intervals of each difference.

    Args:
        runs: two or more folders `jielong eval` wrote; the first is the baseline.
        out: where compare.json, compare.md and compare.png go.
        samples: bootstrap resamplings.
        seed: the bootstrap's random seed.
    """
    if len(runs) < 2:
        raise UserError("eval compare: give two or more runs (folders `jielong eval` wrote)")
    if samples < 100:
        raise UserError(f"--samples {samples}: use at least 100 bootstrap resamplings")
    result = compare_runs(runs, samples, seed)
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    write_json(d / "compare.json", result)
    write_text(d / "compare.md", compare_md(result))
    compare_png(result, d / "compare.png")
    print(compare_md(result))
    print(f"compare: {d / 'compare.md'}  chart: {d / 'compare.png'}")
    return result
