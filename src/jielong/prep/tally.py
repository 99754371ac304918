"""Counting what each step keeps: the `Tally` step that sits after every step of stage 1,
and the per-step table of stats.json built from the counters of all tasks.

    pipeline = [step_a, Tally("a"), step_b, Tally("b"), writer]   # labels: a, tally:a, b, …
    stats = stage1_stats(cfg, labels)   # {"steps": [{"step": "a", "docs": …}, …], …}

A tally counts documents, characters, a length histogram (`length_bin`), languages and
scripts; a step's own counters (datatrove's "dropped_<reason>", its time) give the reasons.
"""

from __future__ import annotations

import json
from pathlib import Path

from datatrove.pipeline.base import PipelineStep
from tqdm import tqdm

from jielong.prep.config import CleanConfig, options


def length_bin(n: int) -> int:
    """Histogram bin of a length: 0 for 0, k for 2^(k-1) <= n < 2^k."""
    return int(n).bit_length()


class Tally(PipelineStep):
    """Counts what passes: documents, characters, a length histogram, languages and
    scripts. One sits after every step, so the report can show what each step did."""

    type = "📊 - TALLY"

    def __init__(self, label: str, progress: int = 0):
        self.name = f"after {label}"
        super().__init__()
        self.label, self.progress = label, progress

    def run(self, data, rank: int = 0, world_size: int = 1):
        bar = None
        if self.progress and rank < self.progress:  # one bar per concurrently running worker
            bar = tqdm(desc=f"task {rank + 1}/{world_size}", unit=" docs", position=rank,
                       leave=False, dynamic_ncols=True, mininterval=0.5)
        try:
            for doc in data:
                n = len(doc.text)
                self.stat_update("docs")
                self.stat_update("chars", value=n)
                self.stat_update(f"len_{length_bin(n):02d}")
                for key in ("lang", "script"):
                    if key in doc.metadata:
                        self.stat_update(f"{key}_{doc.metadata[key]}")
                if bar is not None:
                    bar.update()
                yield doc
        finally:
            if bar is not None:
                bar.close()



def sum_stats(folder: Path) -> list[dict[str, float]]:
    """Per pipeline element, its datatrove counters summed over all tasks' stats files
    (its time in seconds, where the step tracks it, as "_seconds")."""
    total: list[dict[str, float]] = []
    for p in sorted((folder / "stats").glob("*.json")):
        for i, step in enumerate(json.loads(p.read_text())):
            if len(total) <= i:
                total.append({})
            items = list(step["stats"].items()) + [("_seconds", step.get("time_stats", 0))]
            for k, v in items:
                total[i][k] = total[i].get(k, 0) + (v.get("total", 0) if isinstance(v, dict) else v)
    return total


def prefixed(counters: dict[str, float], prefix: str) -> dict[str, int]:
    """The counters whose names start with `prefix`, the prefix cut off."""
    return {k[len(prefix):]: int(v) for k, v in sorted(counters.items()) if k.startswith(prefix)}



def stage1_stats(cfg: CleanConfig, labels: list[str]) -> dict:
    """stats.json as stage 1 leaves it: a row per step (documents in and out, characters,
    seconds, dropped by reason), the input formats, and what the language step saw.
    `labels` name the stage-1 pipeline's elements, in order ("tally:<step>" for tallies)."""
    counters = sum_stats(cfg.work / "logs" / "stage1")
    by = dict(zip(labels, counters, strict=False))
    steps, prev = [], None
    for label in labels:
        if not label.startswith("tally:"):
            continue
        name = label[len("tally:"):]
        tally, step = by.get(label, {}), by.get(name, {})
        row = {"step": name, "docs_in": prev, "docs": int(tally.get("docs", 0)),
               "chars": int(tally.get("chars", 0)), "seconds": round(step.get("_seconds", 0), 3),
               "dropped": {k[len("dropped_"):]: int(v) for k, v in sorted(step.items())
                           if k.startswith("dropped_")}}
        if prev is not None and prev > row["docs"] and not row["dropped"]:
            row["dropped"] = {name: prev - row["docs"]}  # a step that drops without a reason
        steps.append(row)
        prev = row["docs"]
    first = by.get("tally:read", {})
    detected = by.get("tally:language", {})  # every document, before any quality step
    return {"steps": steps, "inputs": cfg.files, "options": options(cfg),
            "formats": prefixed(by.get("read", {}), "format_"),
            "input": {"length_hist": {str(int(k)): v for k, v in prefixed(first, "len_").items()},
                      "lang": prefixed(detected, "lang_"), "script": prefixed(detected, "script_")}}
