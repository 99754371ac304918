"""`jielong train guard`: a small safety classifier trained with jielong's own classification
stage, on the real COLD offensive-language data plus a written multilingual set.

Run as:
    jielong train guard --model runs/demo/model --out runs/guard
    jielong train guard --model runs/demo/model --out runs/guard --cold ../shared/data/cold --steps 2000

The training set (OUT/train.jsonl, `{"text", "label"}` lines as `jielong train classify`
reads them) is
- COLD (Deng et al. 2022, "COLD: A Benchmark for Chinese Offensive Language Detection";
  thu-coai/COLDataset, columns `,split,topic,label,TEXT`, label 1 = offensive), train split,
  简体: offensive → "hate", non-offensive → "safe" (at most `--cold_rows`, a seeded sample);
- guard_texts/train.tsv (`label<TAB>text`, `#` comments), written for this project in 繁/简/en:
  every category of `jielong.safety.policy.CATEGORIES` and "safe", the safe rows holding hard
  negatives (乳癌, 殺菌, "kill a process", 笑死我了, supporting a friend at risk, news about a
  suicide-prevention hotline), repeated `--repeat` times so COLD does not drown it.

Training is `jielong.train.classify.classify` itself (validated on guard_texts/heldout.tsv).
OUT/guard_report.json then holds, per category on the held-out set, precision, recall, F1
and false-positive rate (the share of texts of other labels flagged as it), as Llama Guard's
paper reports them, and COLD dev F1 of offensive vs not (predicted "hate" = offensive), the
COLD paper's measure. With no COLD folder the written set alone is used (a printed note).
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

from jielong.classifier import load_classifier, predict
from jielong.errors import UserError
from jielong.files import write_json, write_text
from jielong.safety.policy import CATEGORIES
from jielong.train.classify import classify
from jielong.train.loop import TrainConfig

TEXTS = Path(__file__).parent / "guard_texts"
LABELS = (*CATEGORIES, "safe")
GUARD_TRAIN = TrainConfig(lr=1e-3, warmup_steps=20, steps=600, batch_size=32, eval_every=200,
                          save_every=600)


def read_tsv(path: str | Path) -> list[dict]:
    """The `{"text", "label"}` rows of a `label<TAB>text` file (blank and `#` lines skipped)."""
    rows = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        label, sep, text = line.partition("\t")
        if not sep or not text.strip():
            raise UserError(f"{path}:{n}: expected 'label<TAB>text'")
        if label not in LABELS:
            raise UserError(f"{path}:{n}: label {label!r} is not one of {', '.join(LABELS)}")
        rows.append({"text": text.strip(), "label": label})
    return rows


def read_cold(path: str | Path) -> list[dict]:
    """COLD's rows of one CSV as `{"text", "label"}`: label 1 → "hate", 0 → "safe"."""
    rows = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"label", "TEXT"} <= set(reader.fieldnames):
            raise UserError(f"{path}:1: expected COLD's columns ',split,topic,label,TEXT', got "
                            f"{reader.fieldnames}")
        for n, row in enumerate(reader, 2):
            if row["label"] not in ("0", "1") or not (row["TEXT"] or "").strip():
                raise UserError(f"{path}:{n}: label must be 0 or 1 and TEXT non-empty")
            rows.append({"text": row["TEXT"].strip(), "label": "hate" if row["label"] == "1" else "safe"})
    return rows


def build_training_set(cold: str | Path | None, cold_rows: int = 0, repeat: int = 1,
                       seed: int = 0) -> list[dict]:
    """COLD train (mapped, at most `cold_rows` when > 0) plus the written set × `repeat`,
    shuffled by `seed`. A missing COLD folder leaves the written set alone (with a note)."""
    rows = read_tsv(TEXTS / "train.tsv") * max(1, repeat)
    rng = random.Random(seed)
    if cold is not None and (Path(cold) / "train.csv").is_file():
        extra = read_cold(Path(cold) / "train.csv")
        if cold_rows > 0 and len(extra) > cold_rows:
            extra = rng.sample(extra, cold_rows)
        rows += extra
    else:
        print(f"note: no COLD at {cold}/train.csv; training on the written set alone")
    rng.shuffle(rows)
    return rows


def category_metrics(truth: list[str], pred: list[str]) -> dict:
    """Per category: precision, recall, F1, false-positive rate and support."""
    out = {}
    for c in sorted(set(truth) - {"safe"}, key=LABELS.index):
        tp = sum(t == c and p == c for t, p in zip(truth, pred, strict=True))
        fp = sum(t != c and p == c for t, p in zip(truth, pred, strict=True))
        pos = sum(t == c for t in truth)
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / pos if pos else 0.0
        out[c] = {"precision": prec, "recall": rec,
                  "f1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0,
                  "fpr": fp / (len(truth) - pos) if len(truth) > pos else 0.0, "support": pos}
    return out


def binary_f1(truth: list[bool], pred: list[bool]) -> float:
    tp = sum(t and p for t, p in zip(truth, pred, strict=True))
    fp, fn = sum(p and not t for t, p in zip(truth, pred, strict=True)), sum(t and not p for t, p in zip(truth, pred, strict=True))
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def guard(
    model: str = "runs/demo/model",
    out: str = "runs/guard",
    cold: str = "../shared/data/cold",
    cold_rows: int = 8000,
    repeat: int = 10,
    cold_dev_rows: int = 0,
    max_len: int = 128,
    train: TrainConfig = GUARD_TRAIN,
) -> dict:
    """Train a safety classifier (COLD + the written 繁/简/en set) and report it per category.

    Args:
        model: Base causal language model: a jielong or Hugging Face model directory.
        out: Run directory (train.jsonl, the classifier in model/, guard_report.json).
        cold: The COLD folder (train.csv, dev.csv); missing: the written set alone.
        cold_rows: At most this many COLD train rows, a seeded sample (0: all).
        repeat: Times the written training set is repeated so COLD does not drown it.
        cold_dev_rows: Score at most this many COLD dev rows (0: all).
        max_len: Tokens per text; longer texts keep their start.
        train: Optimisation settings (steps, batch size, learning rate, …).
    """
    if cold_rows < 0 or repeat < 1 or cold_dev_rows < 0:
        raise UserError("--cold_rows and --cold_dev_rows must be >= 0 and --repeat >= 1")
    if not Path(model).is_dir():
        raise UserError(f"--model {model}: no such model directory; pass a trained model "
                        "(e.g. runs/demo/model)")
    run = Path(out)
    rows = build_training_set(cold, cold_rows, repeat, train.seed)
    held = read_tsv(TEXTS / "heldout.tsv")
    run.mkdir(parents=True, exist_ok=True)
    write_text(run / "train.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    write_text(run / "heldout.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in held))
    summary = classify(str(run / "train.jsonl"), model=model, out=str(run), val=str(run / "heldout.jsonl"),
                       max_len=max_len, train=train)
    clf, tok = load_classifier(run / "model")
    pred = [label for label, _ in predict(clf, tok, [r["text"] for r in held], max_len)]
    truth = [r["label"] for r in held]
    report = {"heldout": category_metrics(truth, pred), "heldout_n": len(held),
              "hard_negatives_passed": sum(p == "safe" for t, p in zip(truth, pred, strict=True) if t == "safe")
              / max(1, truth.count("safe")),
              "train_rows": len(rows), "steps": summary["steps"], "model": str(run / "model")}
    dev = Path(cold) / "dev.csv" if cold else None
    if dev is not None and dev.is_file():
        dev_rows = read_cold(dev)
        if cold_dev_rows:
            dev_rows = dev_rows[:cold_dev_rows]
        got = predict(clf, tok, [r["text"] for r in dev_rows], max_len)
        report["cold_dev_f1"] = binary_f1([r["label"] == "hate" for r in dev_rows],
                                          [label == "hate" for label, _ in got])
        report["cold_dev_n"] = len(dev_rows)
    write_json(run / "guard_report.json", report)
    print(f"{'category':<13} {'P':>5} {'R':>5} {'F1':>5} {'FPR':>5}")
    for c, m in report["heldout"].items():
        print(f"{c:<13} {m['precision']:5.2f} {m['recall']:5.2f} {m['f1']:5.2f} {m['fpr']:5.2f}")
    tail = f"; COLD dev F1 {report['cold_dev_f1']:.3f}" if "cold_dev_f1" in report else ""
    print(f"hard negatives passed {report['hard_negatives_passed']:.2f}{tail}\n"
          f"classifier: {run / 'model'}  report: {run / 'guard_report.json'}")
    return report
