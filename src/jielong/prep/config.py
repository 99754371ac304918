"""The options of a `jielong data clean` run: `CleanConfig` (everything the output depends
on), `ClusterConfig` (where it runs: Ray, Slurm), their checks before anything starts, and
the run's fingerprint.

    cfg = CleanConfig(files=["/data/web.jsonl"], out="/runs/data", languages=["zh"])
    check_options(cfg, executor="local")   # a UserError names the bad option and the fix
    check_cluster(ClusterConfig(slurm_partition="cpu", dry_run=True), executor="slurm")
    fingerprint(cfg, tasks=8)              # same inputs, options and tasks: a resumable run

CLEAN_STEPS are the per-document steps in the order they run; SKIPPABLE what `--skip`
takes (those and the two de-duplication steps).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import asdict, dataclass
from dataclasses import field as dc_field  # `field` is an option's name below
from pathlib import Path

import numpy as np

from jielong.errors import UserError
from jielong.prep.dedup import MinHashConfig
from jielong.prep.quality_model import QualityModel, upsample_copies

CLEAN_STEPS = ("html", "normalize", "language", "quality", "repetition", "harmful", "pii")
SKIPPABLE = CLEAN_STEPS + ("exact_dedup", "near_dedup")


@dataclass
class CleanConfig:
    """Everything a run depends on (its fingerprint decides whether a killed run resumes)."""

    files: list[str]
    out: str
    field: str = "text"
    txt_split: str = "file"
    convert: str | None = None
    harmful_classifier: str | None = None
    languages: list[str] = dc_field(default_factory=list)
    skip: list[str] = dc_field(default_factory=list)
    minhash: MinHashConfig = dc_field(default_factory=MinHashConfig)
    quality_model: str | None = None
    min_quality: float = 0.0
    upsample_top_fraction: float = 0.0
    upsample_times: int = 1
    format: str = "jsonl"
    shard_docs: int = 100_000
    tokenizer: str | None = None
    quality_preset: str = "web"

    @property
    def work(self) -> Path:
        return Path(self.out) / ".work"


def options(cfg: CleanConfig) -> dict:
    """The options of a run, as stats.json records them (the input files are listed apart)."""
    d = asdict(cfg)
    d.pop("files")
    return d


def check_options(cfg: CleanConfig, executor: str = "local") -> None:
    """Raise a UserError for an option that cannot work, before any file is read."""
    bad = sorted(set(cfg.skip) - set(SKIPPABLE))
    if bad:
        raise UserError(f"--skip {' '.join(bad)}: no such step; steps are {' '.join(SKIPPABLE)}")
    if not 0 <= cfg.min_quality <= 1:
        raise UserError(f"--min_quality {cfg.min_quality} must be between 0 and 1")
    if (cfg.min_quality or cfg.upsample_top_fraction) and not cfg.quality_model:
        raise UserError("--min_quality and --upsample_top_fraction need --quality_model FILE "
                        "(train one with `jielong data quality-train`)")
    if cfg.shard_docs < 1:
        raise UserError(f"--shard_docs {cfg.shard_docs} must be at least 1")
    unknown = sorted(set(cfg.languages) - {"zh", "en", "other"})
    if unknown:
        raise UserError(f"--languages {' '.join(unknown)}: languages are zh, en and other")
    if executor == "ray" and importlib.util.find_spec("ray") is None:
        raise UserError("--executor ray needs ray: pip install 'jielong[data]' (or 'ray')")
    if cfg.quality_model:
        QualityModel.load(cfg.quality_model)  # fail now on a bad file, not in a worker
        upsample_copies(np.zeros(0), cfg.upsample_top_fraction, cfg.upsample_times)
    if cfg.tokenizer and not (Path(cfg.tokenizer) / "tokenizer.json").is_file():
        raise UserError(f"{cfg.tokenizer}: no tokenizer.json; train one with `jielong tokenizer train`")
    if cfg.format == "parquet" and importlib.util.find_spec("pyarrow") is None:
        raise UserError("--format parquet needs pyarrow: pip install 'jielong[data]'")


def fingerprint(cfg: CleanConfig, tasks: int) -> str:
    """Identity of a run: its input files (path, size, mtime), options and task count."""
    h = hashlib.sha256(json.dumps([options(cfg), tasks], sort_keys=True, default=str).encode())
    for f in cfg.files:
        st = os.stat(f)
        h.update(f"{f}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


@dataclass
class ClusterConfig:
    """Where the tasks run when not on this machine's processes.

    Args:
        ray_address: Ray cluster (with --executor ray): "auto" joins the one `ray start` runs on this machine, HOST:6379 names its head; default: start a private one here.
        cpus_per_task: CPUs each task reserves (Ray and Slurm).
        mem_per_cpu_gb: Memory each task reserves per CPU, in GB (Ray and Slurm).
        slurm_partition: Slurm partition (with --executor slurm).
        slurm_time: Slurm time limit per job.
        dry_run: With --executor slurm: write the sbatch scripts to OUT/slurm/ and print how to submit them, submitting nothing.
    """

    ray_address: str | None = None
    cpus_per_task: int = 1
    mem_per_cpu_gb: int = 2
    slurm_partition: str | None = None
    slurm_time: str = "24:00:00"
    dry_run: bool = False


def check_cluster(cluster: ClusterConfig, executor: str) -> None:
    """Raise a UserError for cluster options that cannot work with `executor`."""
    if cluster.cpus_per_task < 1 or cluster.mem_per_cpu_gb < 1:
        raise UserError(f"--cpus_per_task {cluster.cpus_per_task} and --mem_per_cpu_gb "
                        f"{cluster.mem_per_cpu_gb} must be at least 1")
    if executor == "slurm" and not cluster.slurm_partition:
        raise UserError("--executor slurm needs --slurm_partition NAME")
    if cluster.dry_run and executor != "slurm":
        raise UserError(f"--dry_run writes Slurm job scripts: use it with --executor slurm, not {executor}")
    if cluster.ray_address and executor != "ray":
        raise UserError(f"--ray_address is for --executor ray, not {executor}")
