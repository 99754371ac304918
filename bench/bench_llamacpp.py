"""Decoding on a CPU: jielong vs llama.cpp on the same weights (issue 23).

Run as:
    JIELONG_LLAMA_PYTHON=/path/to/llama-venv/bin/python \\
        .venv/bin/python bench/bench_llamacpp.py [--model DIR] [--threads 2] \\
        [--jielong_args "--quantize int8" "--compile"] [--processes 5 --only_extra]

The model (default: the 124m preset with random weights and a 2,048-token byte-level BPE
trained on the demo's chats; or --model DIR, a Llama / Qwen folder) is exported with
jielong's own exporter (`jielong export gguf`, jielong.export) to f32 and q8_0 GGUF files.
Then, batch 1, a --prompt-token prompt (default 32), --new greedy tokens (default 128, no
early stop), --threads threads (default 2), each engine in its own process (so each one's
peak memory is its own):

- prefill tokens/s: prompt tokens / the time to the first new token (the prompt's forward
  and its argmax);
- decode tokens/s: (new - 1) / (the whole run's time - the prefill's), medians of --rounds
  runs after a warm-up run (which also compiles, where a row compiles); with --processes N,
  every row runs in N processes taken in turn (row after row, N times over) and the table
  shows the process with the median decode speed, the slowest and fastest in brackets: on a
  shared machine the memory bandwidth a process gets drifts from one process to the next,
  for llama.cpp as for jielong (75-99 tok/s for llama.cpp f32 here);
- peak RSS: the process's peak resident memory (VmHWM; torch or llama.cpp's library
  included; "runtime": the same before the model is loaded); llama.cpp maps the file, and the mapped pages
  it touches count;
- greedy tokens: how many of the --new equal jielong fp32's, position by position, and
  where the first difference is. llama.cpp f32 agreeing is what shows the export and both
  engines compute the same model (the order of the float sums differs, so a near-tie may
  still flip a token).

jielong's rows: fp32 and bf16 (open_model's dtype), plus `--quantize int8` when open_model
takes `quantize` and `--compile` when generate_ids takes `compile`; each row loads as
`jielong generate` does (float weights packed for oneDNN, `open_model(pack=1)`, unless it
compiles; inside `jielong.runtime.decoding_memory` where the code has it), and "--pack 0" is fp32 on plain `F.linear` weights; --jielong_args adds
rows, each a string of flags: `--dtype` goes to open_model, any other `--name [value]` to
whichever of open_model or generate_ids has a parameter of that name.

llama.cpp's rows run bench/llamacpp_worker.py in the Python named by --llama_python
(default: $JIELONG_LLAMA_PYTHON), which has llama-cpp-python; it is an optional bench
dependency, kept out of jielong's environment because it builds from source:

    python3 -m venv ~/llama-venv && ~/llama-venv/bin/pip install llama-cpp-python

(it compiles llama.cpp: about 22 minutes on 2 cores; for a BLAS prefill set
CMAKE_ARGS="-DGGML_BLAS=ON -DGGML_BLAS_VENDOR=OpenBLAS" first). Without it the script
says so and prints jielong's rows alone.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import jielong.runtime as jielong_runtime
from jielong.checkpoint import save_model
from jielong.config import preset
from jielong.demo.tasks import qa_conversations, world_for
from jielong.errors import UserError
from jielong.export.gguf import export_gguf
from jielong.hub import open_model
from jielong.infer.generate import generate_ids
from jielong.infer.sampling import SamplingParams
from jielong.model import Transformer
from jielong.tokenizer import Tokenizer, train_tokenizer

HERE = Path(__file__).resolve().parent
PROMPT = ("From the market by the river, the baker walked home along the old road. "
          "從前有一隻貓，住在河邊的小鎮。从前有一只猫，住在河边的小镇。")
INSTALL = ("llama-cpp-python is an optional bench dependency and builds from source (about 22 "
           "minutes on 2 cores): python3 -m venv ~/llama-venv && ~/llama-venv/bin/pip install "
           "llama-cpp-python (for a BLAS prefill, set CMAKE_ARGS=\"-DGGML_BLAS=ON "
           "-DGGML_BLAS_VENDOR=OpenBLAS\" first), then rerun with "
           "JIELONG_LLAMA_PYTHON=~/llama-venv/bin/python or --llama_python")


# ----------------------------------------------------------------------------- the model

def random_model(out: Path, name: str) -> Path:
    """A random model of preset `name` with a 2,048-token BPE of the demo's chats, saved."""
    chats = qa_conversations(world_for(0), seed=0, n_train=3000).train
    tok = train_tokenizer([m["content"] for r in chats for m in r["messages"]], vocab_size=2048)
    cfg = preset(name, vocab_size=tok.vocab_size, eos_token_id=tok.eos_id, pad_token_id=0)
    torch.manual_seed(0)
    return save_model(out, Transformer(cfg), tok)


def prompt_ids(model_dir: Path, n: int) -> list[int]:
    ids = Tokenizer.from_dir(model_dir).encode(PROMPT)
    return (ids * (n // len(ids) + 1))[:n]


# ----------------------------------------------------------------------------- jielong's side

def row_options(row: str) -> dict:
    """'--dtype bfloat16 --compile' -> {"dtype": "bfloat16", "compile": True}."""
    words, opts = shlex.split(row), {}
    while words:
        w = words.pop(0)
        if not w.startswith("--"):
            raise UserError(f"--jielong_args {row!r}: {w!r} is not a --flag; write e.g. "
                            "'--quantize int8' or '--compile'")
        opts[w[2:].replace("-", "_")] = (words.pop(0) if words and not words[0].startswith("--")
                                         else True)
    return opts


def split_options(opts: dict) -> tuple[dict, dict]:
    """(open_model's keyword arguments, generate_ids's) of a row's options."""
    loads = set(inspect.signature(open_model).parameters)
    gens = set(inspect.signature(generate_ids).parameters)
    load_kw, gen_kw = {}, {}
    for k, v in opts.items():
        if k in loads:
            load_kw[k] = v
        elif k in gens:
            gen_kw[k] = v
        else:
            raise UserError(f"--jielong_args: --{k} is a parameter of neither open_model nor "
                            "generate_ids in this checkout; drop it (or merge the branch that "
                            "adds it)")
    return load_kw, gen_kw


def default_rows() -> list[str]:
    rows = ["", "--dtype bfloat16"]
    if "pack" in inspect.signature(open_model).parameters:  # jielong generate's default
        rows.insert(1, "--pack 0")
    if "quantize" in inspect.signature(open_model).parameters:
        rows.append("--quantize int8")
    if "compile" in inspect.signature(generate_ids).parameters:
        rows += ["--compile", "--quantize int8 --compile"] if "--quantize int8" in rows \
            else ["--compile"]
    return rows


def peak_rss_mb() -> float:
    """VmHWM, this process's peak resident memory, in MiB. (Not getrusage's ru_maxrss, which
    a child started by exec inherits from its parent when the parent's was larger.)"""
    with open("/proc/self/status") as f:
        return next(int(x.split()[1]) for x in f if x.startswith("VmHWM:")) / 1024


def jielong_worker(model_dir: str, row: str, spec: dict) -> dict:
    """One jielong row, timed in this process (run by `main` as a subprocess)."""
    torch.set_num_threads(spec["threads"])
    load_kw, gen_kw = split_options(row_options(row))
    load_kw.setdefault("dtype", "float32")
    if "pack" in inspect.signature(open_model).parameters:  # as `jielong generate` does
        pack = load_kw.get("pack", False if gen_kw.get("compile") else 1)
        load_kw["pack"] = pack if not isinstance(pack, str) else \
            (False if pack.lower() in ("0", "false", "no") else int(pack))
    runtime = peak_rss_mb()
    memory = getattr(jielong_runtime, "decoding_memory", contextlib.nullcontext)
    with memory():  # as `jielong generate` loads (2 MB pages, freed memory kept), where it does
        model, _, _ = open_model(model_dir, **load_kw)
    prompt, new = [spec["prompt"]], spec["new"]

    def run(n: int) -> list[int]:
        return generate_ids(model, prompt, SamplingParams(max_tokens=n, temperature=0), **gen_kw)[0]

    t = time.perf_counter()
    ids = run(new)  # warm-up (and compilation, where the row compiles)
    warm = time.perf_counter() - t
    run(1)
    prefill, total = [], []
    for _ in range(spec["rounds"]):
        t = time.perf_counter()
        run(1)
        prefill.append(time.perf_counter() - t)
        t = time.perf_counter()
        if run(new) != ids:
            raise RuntimeError(f"jielong {row!r}: greedy tokens changed between runs")
        total.append(time.perf_counter() - t)
    return {"ids": ids, "prefill_s": prefill, "total_s": total, "warmup_s": warm,
            "peak_rss_mb": peak_rss_mb(), "runtime_rss_mb": runtime}


# ----------------------------------------------------------------------------- running the rows

def run_json(cmd: list[str], threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [x for x in r.stdout.splitlines() if x.startswith("{")]
    if r.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd[:3])} … failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return json.loads(lines[-1])


def llama_python(given: str | None) -> str | None:
    """The interpreter with llama-cpp-python, or None (after saying how to get one)."""
    if not given:
        print(f"llama.cpp: no --llama_python and no JIELONG_LLAMA_PYTHON set. {INSTALL}")
        return None
    r = subprocess.run([given, "-c", "import llama_cpp; print(llama_cpp.__version__)"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        print(f"llama.cpp: {given} cannot import llama_cpp. {INSTALL}")
        return None
    return given


def figures(r: dict, prompt: int, new: int) -> dict:
    pre, tot = statistics.median(r["prefill_s"]), statistics.median(r["total_s"])
    return {**r, "prefill_tok_s": prompt / pre, "decode_tok_s": (new - 1) / (tot - pre)}


def agreement(ids: list[int], ref: list[int]) -> str:
    same = sum(a == b for a, b in zip(ids, ref, strict=True))
    first = next((i for i, (a, b) in enumerate(zip(ids, ref, strict=True)) if a != b), None)
    return f"{same} of {len(ref)}" + ("" if first is None else f" (first differs at {first})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="a model folder (default: a random --preset model)")
    ap.add_argument("--preset", default="124m")
    ap.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    ap.add_argument("--new", type=int, default=128, help="greedy tokens generated")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--jielong_args", nargs="*", default=[],
                    help="extra jielong rows, each a quoted string of flags, e.g. '--quantize int8'")
    ap.add_argument("--processes", type=int, default=1, help="run every row in this many "
                    "processes, in turn, and report the median one (the machine's speed drifts "
                    "from one process to the next)")
    ap.add_argument("--only_extra", action="store_true",
                    help="of jielong's default rows keep fp32 alone (the reference), then --jielong_args")
    ap.add_argument("--llama_python", default=os.environ.get("JIELONG_LLAMA_PYTHON"),
                    help="a Python with llama-cpp-python (default: $JIELONG_LLAMA_PYTHON)")
    ap.add_argument("--out", help="where the model and GGUF files go (default: a temp folder)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one jielong row
    args = ap.parse_args()
    if args.processes < 1 or args.rounds < 1:
        ap.error("--processes and --rounds need at least 1")

    if args.worker is not None:
        spec = json.loads(args.worker)
        print(json.dumps(jielong_worker(args.model, spec["row"], spec)))
        return

    out = Path(args.out or tempfile.mkdtemp(prefix="bench_llamacpp_"))
    model_dir = Path(args.model) if args.model else random_model(out / "model", args.preset)
    prompt = prompt_ids(model_dir, args.prompt)
    spec = {"prompt": prompt, "new": args.new, "threads": args.threads, "rounds": args.rounds}
    torch.set_num_threads(args.threads)
    print(f"{model_dir}: batch 1, {args.prompt}-token prompt, {args.new} greedy tokens, "
          f"{args.threads} threads, median of {args.rounds}"
          f"{f' in each of {args.processes} processes' if args.processes > 1 else ''}; {platform.machine()}, "
          f"torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}", flush=True)

    jobs: dict[str, list[str]] = {}
    for row in ["", *[r for r in default_rows() if r and not args.only_extra], *args.jielong_args]:
        jobs["jielong " + (row or "fp32")] = [
            sys.executable, str(HERE / "bench_llamacpp.py"), "--model", str(model_dir),
            "--worker", json.dumps({**spec, "row": row})]
    python = llama_python(args.llama_python)
    if python:
        for outtype in ("f32", "q8_0"):
            path = export_gguf(model_dir, out / f"model-{outtype}.gguf", outtype)
            jobs[f"llama.cpp {outtype}"] = [python, str(HERE / "llamacpp_worker.py"), str(path),
                                            json.dumps(spec)]
    runs: dict[str, list[dict]] = {name: [] for name in jobs}
    for i in range(args.processes):  # round robin: a slow spell of the machine hits every row
        for name, cmd in jobs.items():
            runs[name].append(figures(run_json(cmd, args.threads), args.prompt, args.new))
            print(f"  {name}: decode {runs[name][-1]['decode_tok_s']:.1f} tok/s"
                  + (f" (process {i + 1} of {args.processes})" if args.processes > 1 else ""),
                  flush=True)
    rows: dict[str, dict] = {}
    for name, rs in runs.items():  # the process with the median decode speed, and the range
        rs = sorted(rs, key=lambda r: r["decode_tok_s"])
        rows[name] = {**rs[(len(rs) - 1) // 2], "spread": (rs[0]["decode_tok_s"], rs[-1]["decode_tok_s"])}

    ref = rows["jielong fp32"]["ids"]
    bars = [n for n in ("llama.cpp f32", "llama.cpp q8_0") if n in rows]
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end\n")
    print("| engine | prefill tok/s | decode tok/s | "
          + "".join(f"decode ÷ {b} | " for b in bars)
          + "peak RSS MB (runtime) | greedy tokens = jielong fp32 |")
    print("|---" * (5 + len(bars)) + "|")
    for name, r in rows.items():
        ratios = "".join(f"{r['decode_tok_s'] / rows[b]['decode_tok_s']:.2f} | " for b in bars)
        runtime = f" ({r['runtime_rss_mb']:,.0f})" if "runtime_rss_mb" in r else ""
        warm = f" (first run {r['warmup_s']:.0f} s)" if "compile" in name else ""
        lo, hi = r["spread"]
        spread = f" ({lo:.1f}–{hi:.1f})" if args.processes > 1 else ""
        print(f"| {name}{warm} | {r['prefill_tok_s']:,.0f} | {r['decode_tok_s']:.1f}{spread} | {ratios}"
              f"{r['peak_rss_mb']:,.0f}{runtime} | {agreement(r['ids'], ref)} |")


if __name__ == "__main__":
    main()
