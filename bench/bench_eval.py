"""Multiple-choice evaluation speed: `jielong eval` vs lm-evaluation-harness on the same model,
the same CMMLU files and the same machine, in one run.

Run as:  .venv/bin/python bench/bench_eval.py [--preset demo] [--shots 5] [--rounds 2] [--limit 5]
             [--batch 1] [--batch_size 16] [--cmmlu ../shared/data/cmmlu-dev]

The model is a random one of the preset with a 2,048-token byte-level BPE tokenizer trained on
the CMMLU questions themselves (so a Chinese prompt is a realistic number of tokens), saved
once with `jielong.checkpoint.save_model`. The data is the real CMMLU dev split from
../shared/data/cmmlu-dev (67 subjects × 5 questions), laid out as CMMLU's release (dev/ and
test/, the dev files standing for both: a benchmark of speed, not of the model). lm-eval runs
in-process (`simple_evaluate`, model "hf", fp32 on the CPU, batch size 1 and "auto"), offline,
on task YAMLs that include its own `cmmlu_{subject}.yaml` and point the dataset at the local
files; jielong runs `eval_cmd` (`--batch_size` questions per forward). Both score the same 4 × 335 continuations (the script checks
that the accuracies agree) and rounds alternate so machine noise hits both; the figure is the
ratio of wall times, model loading included on both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from jielong.checkpoint import save_model
from jielong.config import preset
from jielong.eval.command import eval_cmd
from jielong.model import Transformer
from jielong.tokenizer import train_tokenizer

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cmmlu-dev"


def lay_out(root: Path, shared: Path = SHARED) -> list[str]:
    """root/cmmlu/{dev,test}/SUBJECT.csv from the shared dev split; the subjects."""
    subjects = sorted(p.stem for p in shared.glob("*.csv"))
    for split in ("dev", "test"):
        (root / "cmmlu" / split).mkdir(parents=True)
        for s in subjects:
            shutil.copy(shared / f"{s}.csv", root / "cmmlu" / split / f"{s}.csv")
    return subjects


def lm_eval_run(model_dir: Path, data: Path, subjects: list[str], shots: int, batch: str,
                limit: int | None, work: Path) -> tuple[float, dict]:
    import lm_eval  # the peer, a dev dependency
    from lm_eval.tasks import TaskManager

    own = Path(lm_eval.__file__).parent / "tasks" / "cmmlu"
    yamls = work / f"tasks-{time.time_ns()}"
    yamls.mkdir()
    names = []
    for s in subjects:
        names.append(f"bench_cmmlu_{s}")
        config = {"include": str(own / f"cmmlu_{s}.yaml"), "task": names[-1], "num_fewshot": shots,
                  "dataset_path": "csv", "dataset_name": None,
                  "dataset_kwargs": {"data_files": {sp: str(data / "cmmlu" / sp / f"{s}.csv")
                                                    for sp in ("dev", "test")},
                                     "cache_dir": str(work / "hf_datasets")}}
        (yamls / f"{names[-1]}.yaml").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    start = time.perf_counter()
    out = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={model_dir},dtype=float32,device=cpu",
                                  tasks=names, batch_size=batch, limit=limit,
                                  task_manager=TaskManager(include_path=str(yamls), include_defaults=False))
    secs = time.perf_counter() - start
    return secs, {n.removeprefix("bench_cmmlu_"): out["results"][n]["acc,none"] for n in names}


def ours_run(model_dir: Path, data: Path, shots: int, limit: int | None, batch_size: int,
             work: Path) -> tuple[float, dict]:
    start = time.perf_counter()
    r = eval_cmd(str(model_dir), tasks="cmmlu", data=str(data), out=str(work / "ours"), shots=shots,
                 limit=limit, batch_size=batch_size, device="cpu", dtype="float32")
    secs = time.perf_counter() - start
    return secs, {s: v["acc"] for s, v in r["tasks"]["cmmlu"]["subjects"].items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="questions per subject")
    ap.add_argument("--batch", default="1", help="lm-eval's batch size: a number or auto")
    ap.add_argument("--batch_size", type=int, default=16, help="jielong's questions per forward")
    ap.add_argument("--cmmlu", type=Path, default=SHARED, help="the CMMLU dev split's folder of CSVs")
    args = ap.parse_args()
    shared = args.cmmlu
    if not shared.is_dir():
        sys.exit(f"{shared}: the shared CMMLU dev split is not here (--cmmlu DIR)")
    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ[name] = "1"
    work = Path(tempfile.mkdtemp(prefix="bench_eval_"))
    subjects = lay_out(work / "data", shared)
    texts = [line for f in sorted(shared.glob("*.csv")) for line in f.read_text(encoding="utf-8").splitlines()]
    tok = train_tokenizer(texts, vocab_size=2048)
    torch.manual_seed(0)
    cfg = preset(args.preset, vocab_size=tok.vocab_size, max_position_embeddings=4096)
    model_dir = save_model(work / "model", Transformer(cfg), tok)
    print(f"model: {args.preset} preset, {cfg.num_params / 1e6:.2f}M parameters; CMMLU dev: "
          f"{len(subjects)} subjects; {args.shots} shots; torch threads {torch.get_num_threads()}")
    times: dict[str, list[float]] = {"jielong": [], "lm-eval": []}
    for r in range(args.rounds):
        t, ours = ours_run(model_dir, work / "data", args.shots, args.limit, args.batch_size, work)
        times["jielong"].append(t)
        t, theirs = lm_eval_run(model_dir, work / "data", subjects, args.shots, args.batch, args.limit, work)
        times["lm-eval"].append(t)
        same = sum(abs(ours[s] - theirs[s]) < 1e-9 for s in subjects)
        print(f"round {r + 1}: jielong {times['jielong'][-1]:.1f} s, lm-eval {t:.1f} s; "
              f"per-subject accuracy equal in {same}/{len(subjects)} subjects")
    for name, pick in (("best", min), ("median", statistics.median)):
        t = {k: pick(v) for k, v in times.items()}
        print(f"{name} of {args.rounds}: jielong {t['jielong']:.1f} s (--batch_size {args.batch_size}), "
              f"lm-eval {t['lm-eval']:.1f} s (batch {args.batch}): lm-eval / jielong = "
              f"{t['lm-eval'] / t['jielong']:.2f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
