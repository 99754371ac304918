"""Classification metrics: accuracy, per-class precision/recall/F1 with their macro and
weighted averages, and the confusion matrix, as a dict (`classification_report`), a
terminal table that lines up Chinese class names (`format_report`) and a PNG
(`confusion_png`, rows: true class, columns: predicted).

`jielong train classify` prints and writes them for its held-out examples.
"""

from __future__ import annotations

import unicodedata
import warnings
from collections.abc import Sequence
from pathlib import Path

from jielong.files import atomic_path
from jielong.tokenizer import use_color


def classification_report(y_true: Sequence, y_pred: Sequence, labels: Sequence) -> dict:
    """Accuracy, per-class precision/recall/F1/support, their macro (unweighted) and
    weighted (by support) averages, and the confusion matrix (rows: true, columns:
    predicted), for `y_true`/`y_pred` drawn from `labels`. A ratio with a zero denominator
    (a class never predicted, or absent) counts as 0, as scikit-learn does by default."""
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    index = {y: i for i, y in enumerate(labels)}
    L = len(labels)
    confusion = [[0] * L for _ in range(L)]
    for t, p in zip(y_true, y_pred, strict=True):
        if t not in index or p not in index:
            raise ValueError(f"label {t if t not in index else p!r} is not one of {list(labels)}")
        confusion[index[t]][index[p]] += 1
    n = len(y_true)

    def ratio(a: float, b: float) -> float:
        return a / b if b else 0.0

    per_class = {}
    for i, name in enumerate(labels):
        tp = confusion[i][i]
        support = sum(confusion[i])
        predicted = sum(row[i] for row in confusion)
        precision, recall = ratio(tp, predicted), ratio(tp, support)
        per_class[str(name)] = {"precision": precision, "recall": recall,
                                "f1": ratio(2 * precision * recall, precision + recall),
                                "support": support}
    rows = list(per_class.values())
    keys = ("precision", "recall", "f1")
    return {
        "labels": [str(x) for x in labels],
        "n": n,
        "accuracy": ratio(sum(confusion[i][i] for i in range(L)), n),
        "per_class": per_class,
        "macro": {k: ratio(sum(r[k] for r in rows), L) for k in keys},
        "weighted": {k: ratio(sum(r[k] * r["support"] for r in rows), n) for k in keys},
        "confusion": confusion,
    }


def text_width(s: str) -> int:
    """Terminal columns of `s`: Han and other wide characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in s)


def pad_text(s: str, width: int, right: bool = False) -> str:
    """`s` padded with spaces to `width` terminal columns (on the left when `right`)."""
    fill = " " * max(0, width - text_width(s))
    return fill + s if right else s + fill


def format_report(report: dict, color: bool | None = None) -> str:
    """The report as a terminal table (per-class scores, averages, confusion matrix);
    coloured on a terminal (see `jielong.tokenizer.use_color`), plain otherwise."""
    color = use_color() if color is None else color

    def paint(s: str, code: str) -> str:
        return f"\033[{code}m{s}\033[0m" if color and code else s

    def grade(v: float) -> str:  # green / yellow / red
        return "32" if v >= 0.9 else "33" if v >= 0.7 else "31"

    names = report["labels"]
    w = max([text_width(x) for x in names] + [len("weighted avg")])
    lines = [paint(pad_text("", w) + "  precision  recall      f1  support", "1")]
    for name in names:
        r = report["per_class"][name]
        lines.append(pad_text(name, w) + f"  {r['precision']:9.3f}  {r['recall']:6.3f}  "
                     + paint(f"{r['f1']:6.3f}", grade(r["f1"])) + f"  {r['support']:7d}")
    lines.append("")
    for key, title in (("macro", "macro avg"), ("weighted", "weighted avg")):
        r = report[key]
        lines.append(pad_text(title, w) + f"  {r['precision']:9.3f}  {r['recall']:6.3f}  "
                     + paint(f"{r['f1']:6.3f}", grade(r["f1"])) + f"  {report['n']:7d}")
    lines.append(pad_text("accuracy", w) + " " * 21 + paint(f"{report['accuracy']:6.3f}",
                                                            grade(report["accuracy"]))
                 + f"  {report['n']:7d}")
    lines += ["", paint("confusion matrix (rows: true, columns: predicted)", "1")]
    cw = max([len(str(c)) for row in report["confusion"] for c in row] + [3])
    short = [x if text_width(x) <= 12 else x[:10] + "…" for x in names]
    cw = max([cw] + [text_width(x) for x in short])
    lines.append(pad_text("", w) + "".join("  " + pad_text(x, cw, right=True) for x in short))
    for i, name in enumerate(names):
        cells = []
        for j, c in enumerate(report["confusion"][i]):
            code = "32" if i == j and c else "31" if c else "2"
            cells.append("  " + paint(pad_text(str(c), cw, right=True), code))
        lines.append(pad_text(name, w) + "".join(cells))
    return "\n".join(lines)


_CJK_FONT_HINTS = ("CJK", "Source Han", "WenQuanYi", "Hei", "Ming", "Song", "Kai", "PingFang",
                   "YaHei", "Hiragino", "AR PL")


def _tick_labels(names: list[str]) -> tuple[list[str], list[str]]:
    """(font families, tick labels): a CJK font after the default when one is installed;
    a name the fonts cannot draw becomes `class N`."""
    # lazy: matplotlib takes a second to import, and only the plot needs it (as in plots.py)
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    families = [font_manager.fontManager.defaultFamily["ttf"]]
    cjk = next((f for f in font_manager.fontManager.ttflist
                if any(h in f.name for h in _CJK_FONT_HINTS)), None)
    paths = [font_manager.findfont(families[0])]
    if cjk is not None:
        families.append(cjk.name)
        paths.append(cjk.fname)
    drawable = set()
    for p in paths:
        try:
            drawable |= set(FT2Font(p).get_charmap())
        except (OSError, RuntimeError):
            continue
    ticks = [x if all(ord(c) in drawable for c in x) else f"class {i}" for i, x in enumerate(names)]
    return families, ticks


def confusion_png(report: dict, path: str | Path, title: str = "confusion matrix") -> Path:
    """The confusion matrix as a PNG (rows: true class, columns: predicted), with counts."""
    import matplotlib  # lazy, as in plots.py: the backend is chosen before pyplot loads

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families, ticks = _tick_labels(report["labels"])
    m = report["confusion"]
    L = len(m)
    size = min(12, 2.5 + 0.6 * L)
    with matplotlib.rc_context({"font.family": families}), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing")
        fig, ax = plt.subplots(figsize=(size + 1, size), dpi=110)
        totals = [max(1, sum(row)) for row in m]
        shade = [[c / t for c in row] for row, t in zip(m, totals, strict=True)]  # recall per row
        im = ax.imshow(shade, cmap="Blues", vmin=0, vmax=1)
        if L <= 30:
            for i in range(L):
                for j in range(L):
                    ax.text(j, i, str(m[i][j]), ha="center", va="center", fontsize=9,
                            color="white" if shade[i][j] > 0.5 else "black")
        ax.set_xticks(range(L), ticks, rotation=45 if L > 4 else 0, ha="right" if L > 4 else "center")
        ax.set_yticks(range(L), ticks)
        ax.set(xlabel="predicted", ylabel="true",
               title=f"{title} · accuracy {report['accuracy']:.3f}, macro F1 {report['macro']['f1']:.3f}")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)
    return Path(path)
