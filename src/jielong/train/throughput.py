"""How well a training run uses its hardware: model FLOPs per token, achieved TFLOP/s, MFU
against the device's peak, and peak memory per device.

FLOPs per token follow Kaplan et al. 2020 (section 2.1, "C ≈ 6N") and PaLM's appendix B
(Chowdhery et al. 2022), as nanochat's `estimate_flops` does:

    flops/token = 6·N + 12·L·H·Q·T

6·N: each weight is one multiply-add (2 FLOPs) per token forward and two backward (the
gradient of the input and of the weight). N counts every parameter that takes part in a
matmul: the layers and the output projection (lm_head), but not the input embedding table,
which is a lookup. lm_head is counted whether or not it is tied to the embeddings: tying
shares the storage, not the work (for an untied model this is nanochat's "all parameters
minus the embedding"). 12·L·H·Q·T: attention's two matmuls (scores q·kᵀ and the weighted
sum of values), 2·T·H·Q FLOPs each per token and layer forward, twice that backward, over
the whole window T (as PaLM counts it: a causal kernel skips about half, MFU does not give
it credit). With frozen base weights (LoRA) no weight gradient is computed for them, so
they count 4 per token, not 6. RLHF's sampling, DPO's and KTO's reference passes are not
counted: their MFU is an underestimate.

MFU (model FLOPs utilisation, PaLM appendix B) = achieved model FLOP/s ÷ the device's peak.
The peak is looked up by `torch.cuda.get_device_name()` and the dtype the matmuls run in
(bf16 under the loop's autocast on CUDA): dense (not 2:4-sparse) tensor-core figures from
the vendors' datasheets — NVIDIA H100 and H200 (Hopper) datasheets, A100 datasheet, L4,
L40S, L40 and A10 datasheets, the Ada (RTX 4090) and Ampere GA102 (RTX 3090) whitepapers'
"FP16 tensor with FP32 accumulate" rows, V100 and T4 datasheets, the HGX B200 datasheet
(per GPU), AMD's MI300X datasheet. A10G is AWS's variant of the A10, for which NVIDIA
publishes no sheet: the A10's figures. CPUs and devices not in the table have no peak:
give `--peak_tflops X` (per device) to get MFU anyway, or to override the table.

Peak memory is `torch.cuda.max_memory_allocated` on CUDA (tensors only; the allocator's
cache and NCCL buffers come on top) and the process's peak resident set
(`resource.getrusage`) elsewhere. Under torchrun each rank measures its own; the summary
gathers them on every rank (`mem_gib`: the largest, `mem_gib_ranks`: each).

Achieved TFLOP/s are per device: the FLOPs of one rank's tokens over the median time of
the last 20 steps, so the first step (warm-up, compilation) and steps followed by an
evaluation or a checkpoint do not skew it.
"""

from __future__ import annotations

import collections
import re
import resource
import statistics
import sys
import time

import torch
import torch.distributed as dist
from tqdm import tqdm

from jielong.config import ModelConfig
from jielong.model import Transformer


def matmul_params(config: ModelConfig) -> int:
    """N: every parameter but the input embedding table, with lm_head counted once even when
    it is tied (its matmul runs either way)."""
    embedding = config.vocab_size * config.hidden_size
    lm_head = embedding if config.tie_word_embeddings else 0  # num_params counted it once, as the table
    return config.num_params - embedding + lm_head


def flops_per_token(config: ModelConfig, seq_len: int, train_weights: bool = True) -> int:
    """Model FLOPs of one token's forward and backward pass at window `seq_len`:
    6·N + 12·L·H·Q·T (4·N when the weights are frozen, as under LoRA)."""
    per_weight = 6 if train_weights else 4
    attention = 12 * config.num_hidden_layers * config.num_attention_heads * config.head_dim * seq_len
    return per_weight * matmul_params(config) + attention


# (pattern matched in torch.cuda.get_device_name(), short name, dense TFLOP/s per dtype).
# More specific names first: "H100 PCIe" and "H100 NVL" before the SXM "H100".
PEAK_TFLOPS: list[tuple[str, str, dict[str, float]]] = [
    (r"H100.*PCIe", "H100 PCIe", {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.0}),
    (r"H100 NVL", "H100 NVL", {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    (r"H200 NVL", "H200 NVL", {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    (r"H100|H800|GH200", "H100 SXM", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    (r"H200", "H200 SXM", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    (r"B200", "B200", {"bf16": 2250.0, "fp16": 2250.0, "tf32": 1125.0}),
    (r"A100|A800", "A100", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    (r"L40S", "L40S", {"bf16": 362.05, "fp16": 362.05, "tf32": 183.0, "fp32": 91.6}),
    (r"L40\b", "L40", {"bf16": 181.05, "fp16": 181.05, "tf32": 90.5, "fp32": 90.5}),
    (r"\bL4\b", "L4", {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3}),
    (r"A10G", "A10G", {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2}),
    (r"\bA10\b", "A10", {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2}),
    (r"RTX 4090", "RTX 4090", {"bf16": 165.2, "fp16": 165.2, "tf32": 82.6, "fp32": 82.6}),
    (r"RTX 3090", "RTX 3090", {"bf16": 71.0, "fp16": 71.0, "tf32": 35.6, "fp32": 35.6}),
    (r"V100.*PCIE|V100.*PCIe", "V100 PCIe", {"fp16": 112.0, "fp32": 14.0}),
    (r"V100", "V100 SXM2", {"fp16": 125.0, "fp32": 15.7}),
    (r"\bT4\b", "T4", {"fp16": 65.0, "fp32": 8.1}),
    (r"MI300X", "MI300X", {"bf16": 1307.4, "fp16": 1307.4, "tf32": 653.7, "fp32": 163.4}),
]
DTYPES = {"bf16": "bf16", "bfloat16": "bf16", "torch.bfloat16": "bf16", "fp16": "fp16",
          "float16": "fp16", "torch.float16": "fp16", "half": "fp16", "tf32": "tf32",
          "fp32": "fp32", "float32": "fp32", "torch.float32": "fp32", "float": "fp32"}


def peak_flops(device_name: str, dtype: str | torch.dtype) -> tuple[str, float] | None:
    """(the table's name for the device, its dense peak FLOP/s in `dtype`), or None when the
    device or that dtype on it is not in the table (a CPU, an unlisted GPU)."""
    kind = DTYPES.get(str(dtype).lower())
    for pattern, name, figures in PEAK_TFLOPS:
        if re.search(pattern, device_name):
            tflops = figures.get(kind) if kind else None
            return (name, tflops * 1e12) if tflops else None
    return None


def peak_memory_gib(device: torch.device) -> float:
    """The most memory this process has held so far on `device`, in GiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**30 if sys.platform == "darwin" else 2**20)


def sig(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


class Throughput:
    """Created before the loop; `step(batch)` after each optimizer step returns the metrics
    for that step's line (tflops, mfu when the peak is known, mem_gib); `summary()` at the
    end (on every rank: it gathers the ranks' memory)."""

    def __init__(self, model: torch.nn.Module, device: torch.device, cfg, world: int = 1,
                 verbose: bool = True):
        self.device, self.world, self.grad_accum = device, world, cfg.grad_accum
        self.verbose = verbose
        lm = model if isinstance(model, Transformer) else None  # a classifier's head, PPO's pair: no count
        self.config = lm.config if lm is not None else None
        self.train_weights = lm is None or all(p.requires_grad for p in lm.parameters() if p.dim() >= 2)
        self.dtype = "bf16" if device.type == "cuda" else "fp32"  # the loop's autocast
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
        found = peak_flops(name, self.dtype)
        if cfg.peak_tflops:
            self.peak, self.peak_from = cfg.peak_tflops * 1e12, f"--peak_tflops for {name}"
        elif found:
            self.peak, self.peak_from = found[1], f"{found[0]} {self.dtype} datasheet"
        else:
            self.peak, self.peak_from = None, name
        self.times: collections.deque[float] = collections.deque(maxlen=20)
        self.last = time.perf_counter()
        self.flops_token: int | None = None
        self.tflops: float | None = None

    def step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        now = time.perf_counter()
        self.times.append(now - self.last)
        self.last = now
        out: dict[str, float] = {}
        ids = batch.get("input_ids")
        if self.config is not None and ids is not None:
            if self.flops_token is None:
                self.flops_token = flops_per_token(self.config, ids.shape[-1], self.train_weights)
                self.announce(ids.shape[-1])
            flops = self.flops_token * ids.numel() * self.grad_accum  # this rank's tokens
            self.tflops = flops / statistics.median(self.times) / 1e12
            out["tflops"] = sig(self.tflops)
            if self.peak:
                out["mfu"] = sig(self.tflops * 1e12 / self.peak)
        out["mem_gib"] = sig(peak_memory_gib(self.device), 3)
        return out

    def announce(self, seq_len: int) -> None:
        if not self.verbose:
            return
        peak = (f"MFU against {self.peak / 1e12:,.1f} TFLOP/s ({self.peak_from})" if self.peak
                else f"no peak FLOP/s known for {self.peak_from}: pass --peak_tflops for MFU")
        tqdm.write(f"accounting: {self.flops_token / 1e6:,.2f} MFLOP/token ({'6' if self.train_weights else '4'}"
              f"·N + attention at T={seq_len}); {peak}")

    def summary(self) -> dict:
        mem = peak_memory_gib(self.device)
        ranks = [mem]
        if self.world > 1 and dist.is_initialized():  # each rank fills its slot of a summed vector
            slots = torch.zeros(self.world, dtype=torch.float64, device=self.device)
            slots[dist.get_rank()] = mem
            dist.all_reduce(slots)
            ranks = slots.tolist()
        out = {"mem_gib": sig(max(ranks), 3), "mem_gib_ranks": [sig(m, 3) for m in ranks]}
        if self.flops_token is not None and self.tflops is not None:
            out.update(flops_per_token=self.flops_token, tflops=sig(self.tflops))
            if self.peak:
                out["mfu"] = sig(self.tflops * 1e12 / self.peak)
        if self.verbose:
            parts = [f"{out['tflops']:.4g} TFLOP/s per device"] if "tflops" in out else []
            parts += [f"MFU {out['mfu']:.2%}"] if "mfu" in out else []
            parts.append(f"peak memory {out['mem_gib']:.3g} GiB" + (
                f" (ranks: {', '.join(f'{m:.3g}' for m in out['mem_gib_ranks'])})" if len(ranks) > 1 else ""))
            print("throughput: " + ", ".join(parts))
        return out
