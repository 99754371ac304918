"""One decoded token's matrix–vector products on a CPU: which kernel reads fp32 weights fastest.

Run as:  .venv/bin/python bench/bench_gemv.py [--preset 124m] [--threads 2] [--rounds 10]

Decoding one sequence multiplies one row by every weight matrix once a token, so it is a pass
over the weights, bound by memory bandwidth. This times that pass over a preset's decoder
matrices (q, k, v, o, gate, up, down for every layer, each its own random weight, so together
they are larger than the caches, as in a real model) with each kernel jielong can use:

- `F.linear` (MKL), what plain eager PyTorch runs;
- oneDNN's packed matmul (`jielong.quant.PackedLinear`), what `jielong generate` uses eagerly;
- the same with q/k/v and gate/up fused into one matrix each (fewer, larger calls);
- inductor's loop for `(x * W).sum(-1)` under torch.compile, what the compiled decode step
  runs (`jielong.infer.compiled.OneRowProducts`);
- `Tensor.sum` over the same weights: the floor for that many separate passes.

Printed: best of --rounds passes, ms, and the implied GB/s.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from common import machine
from torch import nn

from jielong.config import preset
from jielong.quant import PackedLinear


def best_ms(fn, rounds: int) -> float:
    fn()
    fn()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="124m")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = preset(args.preset)
    h, f = cfg.hidden_size, cfg.intermediate_size
    qo, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    layer = [(qo, h), (kv, h), (kv, h), (h, qo), (f, h), (f, h), (h, f)]  # (out, in)
    fused = [(qo + 2 * kv, h), (h, qo), (2 * f, h), (h, f)]
    L = cfg.num_hidden_layers
    torch.manual_seed(0)
    weights = [torch.randn(o, i) for _ in range(L) for o, i in layer]
    xs = {i: torch.randn(1, i) for i in {i for _, i in layer}}
    nbytes = sum(w.numel() * 4 for w in weights)
    print(f"{args.preset}: {len(weights)} matrices, {nbytes / 1e6:.0f} MB fp32, one row, "
          f"{args.threads} threads; {machine()}")

    def report(name: str, ms: float) -> None:
        print(f"  {name:<52} {ms:6.2f} ms  {nbytes / ms / 1e6:5.1f} GB/s")

    with torch.inference_mode():
        report("F.linear (MKL)", best_ms(lambda: [F.linear(xs[w.shape[1]], w) for w in weights],
                                         args.rounds))
        packed = [PackedLinear(lin_of(w), 1) for w in weights]
        report("oneDNN packed (PackedLinear, rows=1)",
               best_ms(lambda: [p(xs[p.in_features]) for p in packed], args.rounds))
        big = [PackedLinear(lin_of(torch.randn(o, i)), 1) for _ in range(L) for o, i in fused]
        report("oneDNN packed, q/k/v and gate/up fused",
               best_ms(lambda: [p(xs[p.in_features]) for p in big], args.rounds))

        def products(ws, x_by_in):
            return [(x_by_in[w.shape[1]] * w).sum(-1) for w in ws]

        compiled = torch.compile(products)
        report("inductor, (x * W).sum(-1) compiled",
               best_ms(lambda: compiled(weights, xs), args.rounds))
        report("Tensor.sum over the same weights (the floor)",
               best_ms(lambda: [w.sum() for w in weights], args.rounds))


def lin_of(w: torch.Tensor) -> nn.Linear:
    lin = nn.Linear(w.shape[1], w.shape[0], bias=False)
    lin.weight.data = w
    return lin


if __name__ == "__main__":
    main()
