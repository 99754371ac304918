"""Finetuning: full vs LoRA memory, and jielong's SFT step vs a transformers (+ PEFT) loop.

Run as:  .venv/bin/python bench/bench_finetune.py [--device cuda] [--preset 350m]

One random model of the preset (124M parameters by default, tied 50,304-token vocabulary) is
saved once with `jielong.checkpoint.save_model`; every variant loads those same weights and
trains on the same packed SFT batches (random conversations whose prompt tokens are masked
out of the loss, packed by `jielong.train.packing.pack`):

    jielong full        jielong.checkpoint.load_model, every weight trained
    jielong LoRA        + jielong.lora.add_adapter (r=16, alpha=32, dropout 0, on q k v o gate up down)
    transformers full   AutoModelForCausalLM.from_pretrained (sdpa attention)
    PEFT LoRA           + peft.get_peft_model with the same LoRA settings

The step is `jielong.train.loop.fit`'s, spelled out: set the scheduled lr, forward + loss under
autocast (bf16 on CUDA, none on CPU: fp32), backward, clip the gradient norm to 1, AdamW step
(the loop's own `_optimizer` for all four: weight decay on matrices only, fused on CUDA),
zero_grad(set_to_none). jielong's loss is `PackedStage.loss` (packed attention mask, fused
output projection + cross-entropy). transformers gets the per-conversation `position_ids`,
from which it builds the same block-diagonal causal mask itself (its packed-sequence
detection, what TRL's padding-free collator relies on), and `shift_labels`, and computes its
own loss (ForCausalLMLoss). The first step's loss is printed for each: all must agree.

Two phases:
- memory: each variant in a fresh process, two steps (the first creates AdamW's state, the
  second is a steady-state step). On CPU the process reads /proc/self/status: VmRSS after its
  imports is the baseline; once model, adapter, optimizer and batches are in place it resets
  the peak (`echo 5 > /proc/self/clear_refs`) so that loading does not count; after the steps
  VmHWM − baseline is the peak: weights + gradients + AdamW state + activations. The
  processes run with glibc's mmap threshold pinned at 128 KiB (MALLOC_MMAP_THRESHOLD_, its
  default starting value): otherwise glibc raises it after the first large free and keeps
  freed tensors' memory resident, so the peak measures the allocator's history more than the
  live tensors (--glibc-default shows that). On CUDA: torch.cuda.max_memory_allocated().
- speed: one process per method holding both jielong's model and transformers', stepping
  them in turn (warm-up, then --steps timed steps each), default allocator settings, so that
  machine noise hits both alike. tokens/s counts every position of the packed rows
  (batch × seq_len) over the median step time.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PAIRS = {"full": ("jielong-full", "transformers-full"), "lora": ("jielong-lora", "peft-lora")}
MEMORY_STEPS = 2


def status_mb(key: str) -> float:
    """VmRSS (now) or VmHWM (peak since start or the last reset) of this process, in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def make_data(vocab: int, seq_len: int, rows: int, pad: int, seed: int = 0):
    """Packed rows of random "conversations" of 16..seq_len tokens, the first 20-60% of each
    a prompt (labels IGNORE), the rest the reply that is learned."""
    from jielong.data.chat import IGNORE
    from jielong.train.packing import pack

    rng = random.Random(seed)
    examples = []
    for _ in range(max(256, 3 * rows)):
        n = rng.randint(16, seq_len)
        ids = [rng.randrange(1, vocab) for _ in range(n)]
        prompt = int(n * rng.uniform(0.2, 0.6))
        examples.append((ids, [IGNORE] * prompt + ids[prompt:]))
    return pack(examples, seq_len, pad, seed)


def import_libraries() -> None:
    """Import every library of all four variants before the baseline is read, in every
    process alike: code (and what importing transformers sets up in torch, ~60 MB that a
    jielong-only process would otherwise allocate lazily during its first step) is not
    training memory."""
    import peft  # noqa: F401
    from transformers import AutoModelForCausalLM, LlamaForCausalLM  # noqa: F401

    import jielong.checkpoint  # noqa: F401
    import jielong.lora  # noqa: F401
    import jielong.train.sft  # noqa: F401


class Trainer:
    """One variant: its model, optimizer and batches, and fit's training step."""

    def __init__(self, variant: str, model_dir: str, args: argparse.Namespace, n_steps: int):
        import torch

        from jielong.lora import LoraConfig, add_adapter, count_parameters
        from jielong.train.loop import TrainConfig, _optimizer, lr_at
        from jielong.train.packing import PackedStage

        self.dev = dev = torch.device(args.device)
        self.ours = variant.startswith("jielong")
        lora = variant.endswith("lora")
        if self.ours:
            from jielong.checkpoint import load_model

            model = load_model(model_dir, device=dev, dtype=torch.float32)
            if lora:
                add_adapter(model, LoraConfig(r=args.rank, alpha=2 * args.rank, dropout=0.0,
                                              target_modules=TARGETS))
        else:
            import peft
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                         attn_implementation="sdpa").to(dev)
            if lora:
                model = peft.get_peft_model(model, peft.LoraConfig(
                    r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0,
                    target_modules=TARGETS, task_type="CAUSAL_LM"))
        model.train()
        self.model = model
        self.trainable, self.total = count_parameters(model)
        self.weights_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
        self.cfg = TrainConfig(steps=n_steps, batch_size=args.batch, lr=2e-4 if lora else 2e-5,
                               warmup_steps=1, device=args.device)
        self.packed = make_data(model.config.vocab_size, args.seq, n_steps * args.batch, pad=0)
        self.stage = PackedStage(self.packed, None, self.cfg)
        self.batches = [{k: v.to(dev) for k, v in self.stage.batch(s, 0, 0).items()}
                        for s in range(n_steps)]
        self.opt = _optimizer(model, self.cfg, dev)
        self.lr_at = lr_at
        self.amp = torch.autocast("cuda", torch.bfloat16) if dev.type == "cuda" \
            else torch.autocast("cpu", enabled=False)
        self.tokens = args.batch * args.seq

    def loss(self, b):
        if self.ours:
            return self.stage.loss(self.model, b)[0]
        return self.model(input_ids=b["input_ids"], position_ids=b["positions"], labels=b["labels"],
                          shift_labels=b["labels"], use_cache=False).loss

    def step(self, s: int) -> tuple[float, float]:
        """(loss, seconds) of optimizer step s."""
        import torch

        t = time.perf_counter()
        for g in self.opt.param_groups:
            g["lr"] = self.lr_at(s, self.cfg)
        with self.amp:
            loss = self.loss(self.batches[s])
            loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        value = loss.item()  # waits for the device, as fit's logging does
        return value, time.perf_counter() - t

    def info(self) -> dict:
        return {"trainable": self.trainable, "total": self.total, "weights_mb": self.weights_mb,
                "fill": self.packed.fill, "tokens": self.tokens}


def memory_child(variant: str, model_dir: str, args: argparse.Namespace) -> dict:
    import torch

    import_libraries()
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.zeros(1, device=args.device)  # the CUDA context, before the baseline
    base_mb = status_mb("VmRSS")
    tr = Trainer(variant, model_dir, args, MEMORY_STEPS)
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    reset = reset_peak()
    losses = [tr.step(s)[0] for s in range(MEMORY_STEPS)]
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else status_mb("VmHWM") - base_mb
    return tr.info() | {"peak_mb": peak, "peak_reset": reset or cuda, "loss0": losses[0]}


def speed_child(method: str, model_dir: str, args: argparse.Namespace) -> dict:
    n = args.warmup + args.steps
    import_libraries()
    trainers = {v: Trainer(v, model_dir, args, n) for v in PAIRS[method]}
    out = {v: {"losses": [], "times": []} for v in trainers}
    for s in range(n):
        order = list(trainers) if s % 2 == 0 else list(trainers)[::-1]
        for v in order:
            loss, seconds = trainers[v].step(s)
            out[v]["losses"].append(loss)
            out[v]["times"].append(seconds)
    for v, r in out.items():
        r["step_s"] = statistics.median(r["times"][args.warmup:])
        r["tok_s"] = trainers[v].tokens / r["step_s"]
    return out


def make_model(model_dir: str, args: argparse.Namespace) -> None:
    import torch

    from jielong.checkpoint import save_model
    from jielong.config import preset
    from jielong.model import Transformer

    over = {"vocab_size": args.vocab} if args.vocab else {}
    cfg = preset(args.preset, **over, max_position_embeddings=max(1024, args.seq))
    torch.manual_seed(0)
    save_model(model_dir, Transformer(cfg))


def run_child(kind: str, what: str, model_dir: str, passthrough: list[str], env=None) -> dict:
    t = time.perf_counter()
    p = subprocess.run([sys.executable, __file__, f"--{kind}", what, "--dir", model_dir,
                        *passthrough], capture_output=True, text=True, env=env)
    if p.returncode:
        sys.exit(f"{kind} {what} failed:\n{p.stderr[-4000:]}")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    print(f"  {kind} {what}: {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="124m")
    ap.add_argument("--vocab", type=int, default=None, help="default: the preset's")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--rank", type=int, default=16, help="LoRA r (alpha = 2r)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps (speed phase)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per side (speed phase)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", choices=("memory", "speed"), help="run one phase")
    ap.add_argument("--glibc-default", action="store_true",
                    help="memory phase with glibc's default (dynamic) mmap threshold")
    ap.add_argument("--dir", default=None, help="where to keep the random model (default: a temporary folder, removed after)")
    ap.add_argument("--memory-child", help=argparse.SUPPRESS)
    ap.add_argument("--speed-child", help=argparse.SUPPRESS)
    ap.add_argument("--make", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.dir is None and not (args.memory_child or args.speed_child or args.make):
        with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
            args.dir = tmp
            main_with(args)
        return
    main_with(args)


def main_with(args: argparse.Namespace) -> None:
    model_dir = args.dir
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, model_dir, args)))
        return
    if args.speed_child:
        print(json.dumps(speed_child(args.speed_child, model_dir, args)))
        return
    if args.make:
        make_model(model_dir, args)
        return

    from common import machine

    passthrough = [f"--{k}={getattr(args, k)}" for k in
                   ("preset", "batch", "seq", "rank", "warmup", "steps", "device")]
    passthrough += [f"--vocab={args.vocab}"] if args.vocab else []
    if not (Path(model_dir) / "config.json").exists():
        print(f"saving the random {args.preset} model under {model_dir} …", file=sys.stderr)
        subprocess.run([sys.executable, __file__, "--make", "--dir", model_dir, *passthrough],
                       check=True)
    cuda = args.device.startswith("cuda")
    env = dict(os.environ)
    if not args.glibc_default:
        env["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)
    mem: dict[str, dict] = {}
    speed: dict[str, dict] = {}
    if args.only != "speed":
        for method in PAIRS:
            for v in PAIRS[method]:
                mem[v] = run_child("memory-child", v, model_dir, passthrough, env)
    if args.only != "memory":
        for method in PAIRS:
            speed |= run_child("speed-child", method, model_dir, passthrough)
    info = next(iter(mem.values()), None)
    print(f"\nfinetuning step, {args.preset} preset ("
          + (f"{info['total'] / 1e6:.1f}M parameters, {info['weights_mb']:.0f} MB of fp32 weights, "
             f"rows {info['fill']:.0%} filled), " if info else "")
          + f"packed SFT rows {args.batch}×{args.seq}, LoRA r={args.rank} alpha={2 * args.rank} on "
          f"{len(TARGETS)} linear layers per block; {machine()}")
    if mem:
        how = "torch.cuda.max_memory_allocated()" if cuda else (
            "VmHWM above the imports, loading excluded, glibc "
            + ("default" if args.glibc_default else "mmap threshold 128 KiB"))
        print(f"memory: peak over {MEMORY_STEPS} steps, {how}")
    if speed:
        print(f"speed: median of {args.steps} timed steps after {args.warmup} warm-up, "
              "jielong and transformers alternating in one process")
    print("\n| variant | trainable params | first loss | peak GB | above weights GB | LoRA / full "
          "| tokens/s | jielong / transformers |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    peer = {"jielong-full": "transformers-full", "jielong-lora": "peft-lora"}
    full = {"jielong-lora": "jielong-full", "peft-lora": "transformers-full"}
    for method in ("full", "lora"):
        for v in PAIRS[method]:
            m, s = mem.get(v), speed.get(v)
            loss = m["loss0"] if m else s["losses"][0]
            cells = [v, f"{m['trainable'] / 1e6:.2f}M" if m else "", f"{loss:.4f}"]
            if m:
                cells += [f"{m['peak_mb'] / 1024:.2f}", f"{(m['peak_mb'] - m['weights_mb']) / 1024:.2f}",
                          f"{m['peak_mb'] / mem[full[v]]['peak_mb']:.2f}" if v in full else ""]
            else:
                cells += ["", "", ""]
            cells += [f"{s['tok_s']:,.1f}" if s else "",
                      f"**{s['tok_s'] / speed[peer[v]]['tok_s']:.2f}**" if s and v in peer else ""]
            print("| " + " | ".join(cells) + " |")
    if mem and not cuda and not all(x["peak_reset"] for x in mem.values()):
        print("\nnote: /proc/self/clear_refs was not writable; the peaks include loading the model")


if __name__ == "__main__":
    main()
