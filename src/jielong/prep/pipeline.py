"""The pipeline of `jielong data clean`, built from the steps of this package and run by a
datatrove executor: local processes by default, a Slurm or Ray cluster to scale out
(`jielong.prep.cluster`).

    cfg = CleanConfig(files=[...], out="runs/data")
    stats = run_clean(cfg, executor="local", workers=8)

Two stages:
1. per document, in parallel over the input files (`build_stage1`): read (`readers`) →
   html (`html_extract`) → normalize → language → quality (`quality_rules`) → repetition →
   harmful → pii (`redact`) → classifier (`quality_score`, with a quality model). After
   every step a `Tally` counts what passed; every filter writes what it drops aside
   (`DropWriter`), later OUT/dropped/<reason>.jsonl.
2. one task over everything stage 1 kept (`finish.Finish`): exact and near-duplicate
   removal, which needs all documents at once, then up-sampling by quality score, the
   output shards (OUT/data/part-*.jsonl|parquet), token shards for `jielong pretrain`,
   OUT/stats.json and the report (report.md + charts/).

A killed run resumes: finished stage-1 tasks are skipped when the same command is run again
(the options and input files must not change; OUT/.work holds the state until the end).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from datatrove.executor.local import LocalPipelineExecutor
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.jsonl import JsonlWriter
from datatrove.utils.logging import setup_default_logger

from jielong.prep.cluster import ClusterConfig, run_on_ray, run_on_slurm
from jielong.prep.config import CLEAN_STEPS, CleanConfig, fingerprint
from jielong.prep.console import QuietLocalExecutor, quiet_console
from jielong.prep.finish import Finish
from jielong.prep.harmful import HarmfulFilter
from jielong.prep.html_extract import HtmlExtract
from jielong.prep.language import LanguageScript
from jielong.prep.normalize import Normalize
from jielong.prep.quality_rules import QualityFilter
from jielong.prep.quality_score import QualityScore
from jielong.prep.readers import InputReader, ReadErrors
from jielong.prep.redact import DropWriter, PiiRedact
from jielong.prep.repetition import RepetitionFilter
from jielong.prep.tally import Tally


def stage1_steps(cfg: CleanConfig) -> list[tuple[str, PipelineStep]]:
    """(label, step) for the per-document stage, tallies and drop writers not included."""
    steps: list[tuple[str, PipelineStep]] = [("read", InputReader(cfg.files, cfg.field, cfg.txt_split)),
                                             ("readable", ReadErrors())]
    make = {"html": lambda: HtmlExtract(), "normalize": lambda: Normalize(),
            "language": lambda: LanguageScript(convert=cfg.convert, keep=cfg.languages or None),
            "quality": lambda: QualityFilter(preset=cfg.quality_preset),
            "repetition": lambda: RepetitionFilter(preset=cfg.quality_preset),
            "harmful": lambda: HarmfulFilter(classifier=cfg.harmful_classifier),
            "pii": lambda: PiiRedact()}
    steps += [(s, make[s]()) for s in CLEAN_STEPS if s not in cfg.skip]
    if cfg.quality_model:
        steps.append(("classifier", QualityScore(cfg.quality_model, cfg.min_quality)))
    return steps


def build_stage1(cfg: CleanConfig, progress: int = 0) -> tuple[list, list[str]]:
    """The stage-1 pipeline and the label of each of its elements (for the stats)."""
    pipeline, labels = [], []
    steps = stage1_steps(cfg)
    for i, (label, step) in enumerate(steps):
        if isinstance(step, BaseFilter) and step.exclusion_writer is None:
            step.exclusion_writer = DropWriter(str(cfg.work / "dropped"), label,
                                               redact="pii" not in cfg.skip)
        pipeline += [step, Tally(label, progress if i == len(steps) - 1 else 0)]
        labels += [label, f"tally:{label}"]
    pipeline.append(JsonlWriter(str(cfg.work / "stage1"), output_filename="${rank}.jsonl",
                                compression=None))
    labels.append("write")
    return pipeline, labels


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def run_clean(cfg: CleanConfig, executor: str = "local", workers: int = 0, tasks: int = 0,
              cluster: ClusterConfig | None = None, verbose: bool = False) -> dict | None:
    """Run both stages; returns the stats (None when the jobs were only submitted or written)."""
    cluster = cluster or ClusterConfig()
    if executor == "local":
        workers = workers or available_cores()
        tasks = tasks or min(len(cfg.files), 4 * workers)
    else:  # a cluster: one task per file unless told, as many at once as it will run
        tasks, workers = tasks or len(cfg.files), workers or -1
    tasks = max(1, min(tasks, len(cfg.files)))
    work, out = cfg.work, Path(cfg.out)
    progress = min(workers, tasks) if executor == "local" else 0
    stage1, labels = build_stage1(cfg, progress)  # checks the steps' options first
    stage2 = [Finish(cfg, labels)]
    fp = fingerprint(cfg, tasks)
    if not (work / "fingerprint").is_file() or (work / "fingerprint").read_text() != fp:
        shutil.rmtree(work, ignore_errors=True)  # a new run, not the resumption of a killed one
        work.mkdir(parents=True)
        (work / "fingerprint").write_text(fp)
    logs = work / "logs"
    if not verbose:
        quiet_console()
    try:
        if executor == "slurm":  # submitted (or written): the jobs finish the run, stats come later
            run_on_slurm(stage1, stage2, logs, out, tasks, workers, cluster)
            return None
        if executor == "local":
            Local = LocalPipelineExecutor if verbose else QuietLocalExecutor
            s1 = Local(stage1, tasks=tasks, workers=min(workers, tasks), logging_dir=str(logs / "stage1"))
            s2 = Local(stage2, tasks=1, workers=1, logging_dir=str(logs / "stage2"), depends=s1)
            s2.run()
        else:
            run_on_ray(stage1, stage2, logs, tasks, workers, cluster, verbose)
    finally:
        if not verbose:
            setup_default_logger()
    stats = json.loads((out / "stats.json").read_text())
    if (out / "logs").exists():
        shutil.rmtree(out / "logs")
    os.replace(logs, out / "logs")  # datatrove's per-task stats (and logs, --verbose), for the curious
    shutil.rmtree(work, ignore_errors=True)
    return stats

