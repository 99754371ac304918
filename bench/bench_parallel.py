"""DDP vs FSDP2 on 2 CPU processes (gloo): memory per process and step time.

Run as:  .venv/bin/python bench/bench_parallel.py [--layers 8 --width 512 --steps 6]

Launches `torchrun --standalone --nproc_per_node 2` on this file twice, once per mode, each
training the same model (a llama-style config of ~34M parameters by default, untied head)
on the same batches with jielong's own wrapping (`jielong.train.parallel.wrap`, what `fit`
does for `--parallel ddp|fsdp`) and AdamW. Per process it reports:
- the training state it holds: weights + gradients + AdamW's two moments, counted from the
  tensors themselves (a DTensor's local shard under FSDP);
- resident memory when the model is built, after the last step, and at its peak
  (`getrusage`); besides the training state it holds the Python process, torch, the plain
  model the stage built (FSDP trains a sharded copy of it and frees the plain one on ranks
  other than 0; see jielong.train.parallel) and the buffers of the collectives;
- the median step time over the steps after the first (fwd + bwd + clip + AdamW).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from jielong.config import ModelConfig, preset
from jielong.model import Transformer
from jielong.runtime import init_distributed
from jielong.train.parallel import grad_norm_value, wrap


def local_bytes(tensors) -> int:
    out = 0
    for t in tensors:
        t = t.to_local() if hasattr(t, "to_local") else t
        out += t.numel() * t.element_size()
    return out


def rss_mb() -> float:
    """This process's resident memory now (Linux /proc)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def trimmed_rss_mb() -> float:
    """Resident memory once glibc has handed its free pages back (malloc_trim): what the
    process still uses, not what its allocator keeps for later."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return rss_mb()


def config(args) -> ModelConfig:
    return preset("test", vocab_size=args.vocab, hidden_size=args.width,
                  intermediate_size=args.width * 11 // 4, num_hidden_layers=args.layers,
                  num_attention_heads=args.width // 64, num_key_value_heads=args.width // 64,
                  max_position_embeddings=args.seq, tie_word_embeddings=False)


def worker(args) -> None:
    device = torch.device("cpu")
    rank, world = init_distributed(device)
    torch.manual_seed(0)
    model = Transformer(config(args))
    n_params = sum(p.numel() for p in model.parameters())
    before = rss_mb()
    train_model = wrap(model, args.mode, device, world)
    opt = torch.optim.AdamW(train_model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(1 + rank)
    times = []
    for _ in range(args.steps):
        batch = torch.randint(0, args.vocab, (args.batch, args.seq + 1), generator=g)
        t = time.perf_counter()
        logits = train_model(batch[:, :-1])
        F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten()).backward()
        grad_norm_value(torch.nn.utils.clip_grad_norm_(train_model.parameters(), 1.0))
        held = local_bytes([p for p in train_model.parameters()] + [p.grad for p in train_model.parameters()]
                           + [v for s in opt.state.values() for v in s.values() if v.dim() > 0])
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    row = {"rank": rank, "held_mb": held / 2**20,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "rss_before_mb": before, "rss_end_mb": rss_mb(), "rss_trimmed_mb": trimmed_rss_mb(),
           "step_s": statistics.median(times[1:]), "params": n_params}
    rows = [None] * world
    dist.all_gather_object(rows, row)
    if rank == 0:
        print("RESULT " + json.dumps({"mode": args.mode, "rows": rows}), flush=True)
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=4, help="sequences per process per step")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--mode", choices=["ddp", "fsdp"], help=argparse.SUPPRESS)  # a torchrun worker
    args = ap.parse_args()
    if args.mode:
        return worker(args)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    load = os.getloadavg()[0]
    results = []
    for mode in ("ddp", "fsdp"):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(Path(__file__).resolve()), *sys.argv[1:], "--mode", mode]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
        if out.returncode or not lines:
            sys.exit(f"{mode} failed:\n{out.stderr[-3000:]}")
        results.append(json.loads(lines[0].removeprefix("RESULT ")))
    n = results[0]["rows"][0]["params"]
    print(f"{n / 1e6:.1f}M parameters, {args.layers} layers × {args.width}, 2 processes × "
          f"{args.batch} × {args.seq} tokens a step, fp32, gloo, 1 thread each; "
          f"load average before: {load:.1f}")
    print("| mode | training state held per process | RSS: model built → after the last step → "
          "trimmed (peak) "
          "| step time (median) |")
    print("| --- | --- | --- | --- |")
    for r in results:
        held = " / ".join(f"{x['held_mb']:.0f}" for x in r["rows"])
        rss = " / ".join(f"{x['rss_before_mb']:.0f} → {x['rss_end_mb']:.0f} → {x['rss_trimmed_mb']:.0f} "
                         f"({x['peak_rss_mb']:.0f})"
                         for x in r["rows"])
        step = max(x["step_s"] for x in r["rows"])
        print(f"| {r['mode']} | {held} MB | {rss} MB | {step:.2f} s |")


if __name__ == "__main__":
    main()
