"""The complaint classifier (jielong.serve.complaints) on text it was not written for: how often
it calls a real question a complaint, and how much real offensive Chinese it flags.

Run as:  .venv/bin/python bench/bench_complaints.py [--data ../shared/data]

- held-out: complaint_texts/heldout.tsv, precision and recall per script (what the test checks);
- false positives on questions: every question of DRCD dev (Traditional) and CMRC 2018 dev
  (Simplified), from ../shared/data — real user-ish questions, none a complaint;
- COLD dev (Simplified comments on race, gender, region): the share of offensive comments
  (label 1) it flags, and of the others. COLD's offence is aimed at groups of people, not at
  a chat reply, so this is a rough look at how far "scolding" carries, not a target;
- the time to train it (train.tsv, at first use) and to score a thousand texts.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

from jielong.serve.complaints import (
    THRESHOLD,
    ComplaintModel,
    complaint_probabilities,
    heldout_scores,
    labelled,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def questions(path: Path) -> list[str]:
    data = json.loads(path.read_text(encoding="utf-8"))["data"]
    return [qa["question"] for doc in data for par in doc["paragraphs"] for qa in par["qas"]]


def flagged(texts: list[str]) -> tuple[int, int]:
    return sum(p >= THRESHOLD for p in complaint_probabilities(texts)), len(texts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA, help="the shared data folder")
    data_dir = ap.parse_args().data
    rows = labelled("train")
    t0 = time.perf_counter()
    ComplaintModel.fit([t for _, _, t in rows], [y for y, _, _ in rows])
    fit_s = time.perf_counter() - t0
    print(f"train: {len(rows)} labelled follow-ups, fit in {fit_s:.3f} s")
    print("| held-out | n | precision | recall |\n| --- | ---: | ---: | ---: |")
    for script, s in heldout_scores().items():
        print(f"| {script} | {s['n']} | {s['precision']:.2f} | {s['recall']:.2f} |")
    for name, path in (("DRCD dev questions (繁)", data_dir / "drcd-dev.json"),
                       ("CMRC 2018 dev questions (简)", data_dir / "cmrc2018-dev.json")):
        if path.exists():
            t0 = time.perf_counter()
            hit, n = flagged(questions(path))
            per_k = (time.perf_counter() - t0) / n * 1000
            print(f"{name}: {hit} of {n} flagged ({hit / n:.1%} false positives); "
                  f"{per_k:.3f} s per 1,000")
    cold = data_dir / "cold" / "dev.csv"
    if cold.exists():
        with open(cold, encoding="utf-8-sig", newline="") as f:
            data = list(csv.DictReader(f))
        for label, what in (("1", "offensive"), ("0", "not offensive")):
            hit, n = flagged([r["TEXT"] for r in data if r["label"] == label])
            print(f"COLD dev, {what}: {hit} of {n} flagged ({hit / n:.1%})")


if __name__ == "__main__":
    main()
