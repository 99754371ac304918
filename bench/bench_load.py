"""Loading a ~0.5B-parameter model: jielong's `load_model` vs transformers' `from_pretrained`.

A random model shaped like Qwen2.5-0.5B (24 layers, width 896, GQA 14/2, vocabulary 151,936,
tied embeddings) is saved once with transformers' `save_pretrained` in sharded
safetensors; then each loader reads the same files in a fresh process, which reports its
wall time and its peak resident memory above what it held after importing.

    python bench/bench_load.py            # fp32 files -> fp32, bf16 files -> bf16 and -> fp32
    python bench/bench_load.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAPE = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
             num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
             tie_word_embeddings=True, rope_theta=1000000.0)


def status_mb(key: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process, in MiB. (Not getrusage's ru_maxrss: a
    child process inherits that from its parent across fork and exec.)"""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def child(kind: str, path: str, dtype: str) -> None:
    """Runs in its own process: load once, print JSON."""
    import torch

    if kind == "jielong":
        from jielong.checkpoint import load_model

        def load():
            return load_model(path, dtype=getattr(torch, dtype))
    else:
        from transformers import AutoModelForCausalLM

        def load():
            return AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    base = status_mb("VmRSS")
    t = time.perf_counter()
    model = load()
    seconds = time.perf_counter() - t
    peak_loaded = status_mb("VmHWM")
    with torch.no_grad():  # a lazily mapped model reads its weights only now
        out = model(torch.arange(8)[None])
        out = out if isinstance(out, torch.Tensor) else out.logits
    ready = time.perf_counter() - t
    peak = status_mb("VmHWM")
    size = sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values())
    print(json.dumps({"seconds": seconds, "ready": ready, "peak_loaded_mb": peak_loaded - base,
                      "peak_mb": peak - base, "model_mb": size / 2**20}))


def make_models(root: Path) -> None:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    for dtype in ("float32", "bfloat16"):
        d = root / dtype
        if not (d / "config.json").exists():
            torch.manual_seed(0)
            model = Qwen2ForCausalLM(Qwen2Config(**SHAPE)).to(getattr(torch, dtype))
            model.save_pretrained(d, max_shard_size="500MB")
            del model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--dir", default=None, help="where to keep the random models (default: temp)")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--make", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    if args.make:
        make_models(Path(args.make))
        return
    from common import machine

    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench-load-"))
    print(f"saving the random 0.5B models under {root} …", file=sys.stderr)
    subprocess.run([sys.executable, __file__, "--make", str(root)], check=True)
    dirs = {dtype: root / dtype for dtype in ("float32", "bfloat16")}
    print(f"{machine()}\n")
    print("load: the loader returns · ready: + one forward pass of 8 tokens (a lazily mapped "
          "model reads its\nweights then) · peak: resident memory above the imports, after loading "
          "/ after the forward\n")
    print(f"{'files → dtype':<16}{'loader':<14}{'load s':>8}{'ready s':>9}{'peak MB':>14}"
          f"{'model MB':>10}{'peak/size':>11}")
    for files, dtype in (("float32", "float32"), ("bfloat16", "bfloat16"), ("bfloat16", "float32")):
        row = {}
        for kind in ("jielong", "transformers"):
            runs = []
            for _ in range(args.rounds):
                r = subprocess.run([sys.executable, __file__, "--child", kind, str(dirs[files]), dtype],
                                   capture_output=True, text=True, check=True)
                runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
            best = min(runs, key=lambda x: x["ready"])
            peak = max(x["peak_mb"] for x in runs)
            loaded = max(x["peak_loaded_mb"] for x in runs)
            row[kind] = best | {"peak_mb": peak}
            print(f"{files[:4] + ' → ' + dtype[:4]:<16}{kind:<14}{best['seconds']:>8.2f}"
                  f"{best['ready']:>9.2f}{f'{loaded:.0f} / {peak:.0f}':>14}"
                  f"{best['model_mb']:>10.0f}{peak / best['model_mb']:>11.2f}")
        ours, theirs = row["jielong"], row["transformers"]
        print(f"{'':<16}{'ratio':<14}ready {theirs['ready'] / ours['ready']:.2f}× faster, "
              f"{ours['peak_mb'] / theirs['peak_mb']:.2f}× the peak memory\n")


if __name__ == "__main__":
    main()
