"""The one training loop, shared by every stage.

Every stage (pretrain, sft, classify, distill, reward, dpo, kto, rlhf) supplies its data and
its loss, as this whole runnable example does (a model that learns to count):

    import torch
    import torch.nn.functional as F

    from jielong.config import preset
    from jielong.model import Transformer
    from jielong.train.loop import TrainConfig, fit

    class Count:
        def batch(self, step, micro, rank):  # a dict of tensors, deterministic in its args
            return {"ids": torch.arange(step % 8, step % 8 + 17).repeat(4, 1)}

        def loss(self, model, batch):  # (mean loss, tokens counted)
            logits = model(batch["ids"][:, :-1])
            return F.cross_entropy(logits.flatten(0, 1), batch["ids"][:, 1:].flatten()), 64

        def evaluate(self, model):  # e.g. {"val_loss": 2.1}; {} when nothing is held out
            return {}

    model = Transformer(preset("test", vocab_size=32))
    print(fit(model, Count(), TrainConfig(steps=30, lr=3e-3, device="cpu"), "runs/count"))

A stage may also have `step_metrics() -> dict[str, float]`, read after every optimizer step
and merged into that step's line of metrics.jsonl and the progress bar (RLHF logs its reward,
KL and reply length this way).

`fit(model, stage, cfg, run_dir)` does the rest: device and precision (bf16 autocast on
CUDA), AdamW with warmup + cosine/WSD schedule, gradient accumulation and clipping, a
progress bar with loss, tokens/s and ETA, `metrics.jsonl`, atomic checkpoints under
`RUN/checkpoints/step-N/` (HF directory + trainer_state.pt), exact resume, and DDP or FSDP2
when launched by torchrun (`--parallel`, `--activation_checkpointing`, `--cpu_offload`: see
`jielong.train.parallel`; a sharded run's checkpoints are DCP folders, and the model the
stage gets back holds the full weights on rank 0). Because a batch depends only on (step,
micro, rank) and the RNG state is saved, a run killed at any moment and resumed computes
the same losses step for step.

The global batch. A step is G = grad_accum × world micro-batches of batch_size sequences;
micro-batch g (0 ≤ g < G) is drawn by rank g % world as its micro g // world, i.e. rank r
calls `stage.batch(step, micro, r)` for the global index g = micro × world + r. A stage's
batch must depend only on (step, g) — `EpochSampler` takes the run's (step × G + g)-th slice
of its shuffled epochs, pretraining seeds its random windows with (step, g) — so the data of
a step does not depend on how it is split: 1 process with grad_accum 2 and 2 processes with
grad_accum 1 see the same sequences, and (gradients being averaged over all G) compute the
same losses. A run resumed on another number of processes must keep G: it says which
--grad_accum does (a UserError also when world does not divide G).

When `evaluate` returns a `val_loss`, the loop keeps the best step's checkpoint in
`RUN/checkpoints/best/` (with best.json: its step and val_loss; never a resume point), stops
early after `patience` evaluations without improvement (its state rides in trainer_state.pt,
so a resumed run stops at the same step), and with `load_best_at_end` leaves the best
weights in the model it returns to the stage.

With `eval_tasks` (`--eval_tasks cmmlu,path/to/my_exam,drcd`), multiple-choice benchmarks
and generation tasks are scored at the same evaluations, as `jielong eval` scores them
(`jielong.train.eval_tasks`), and logged beside the validation loss (`eval/TASK/acc`,
`eval/drcd/em` …).
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Protocol

import torch
import torch.distributed as dist
from tqdm import tqdm

from jielong.checkpoint import list_checkpoints, load_model, load_trainer_state, save_model
from jielong.errors import UserError
from jielong.files import atomic_dir, write_json, write_text
from jielong.runtime import init_distributed, pick_device
from jielong.train import throughput
from jielong.train.eval_tasks import TaskScorer, check_tasks, language_model
from jielong.train.parallel import (
    choose,
    consolidate,
    grad_norm_value,
    is_sharded,
    load_sharded,
    no_sync,
    save_sharded,
    uncheckpoint_blocks,
    wrap,
)


@dataclass
class TrainConfig:
    """Optimisation settings shared by every training stage.

    Args:
        steps: Optimizer steps in the whole run.
        batch_size: Sequences per micro-batch, per process.
        grad_accum: Micro-batches accumulated per optimizer step.
        lr: Peak learning rate.
        min_lr_ratio: The schedule ends at lr * min_lr_ratio.
        warmup_steps: Linear warmup steps.
        schedule: cosine, wsd (warmup-stable-decay) or constant.
        decay_fraction: wsd only: share of steps spent decaying at the end.
        weight_decay: AdamW weight decay (not applied to norms and biases).
        beta1: AdamW beta1.
        beta2: AdamW beta2.
        grad_clip: Clip the gradient norm to this.
        eval_every: Evaluate every this many steps (and at the end).
        save_every: Checkpoint every this many steps (and at the end).
        keep_checkpoints: How many recent checkpoints to keep.
        seed: Seed for initialisation and data order.
        device: auto, cpu, cuda, cuda:N or mps.
        compile: torch.compile the model (faster on GPUs, slow to start).
        peak_tflops: The device's peak TFLOP/s for MFU where the table of jielong.train.throughput does not know it (a CPU, an unlisted GPU), or to override it.
        patience: Stop early when the validation loss has not improved for this many evaluations in a row (0: never).
        min_delta: An evaluation improves on the best only if its validation loss is lower by more than this.
        keep_best: Keep the checkpoint of the best validation loss in RUN/checkpoints/best (default: only with --patience or --load_best_at_end; each improvement writes a whole checkpoint).
        load_best_at_end: Make the best checkpoint (not the last step) the stage's result.
        eval_tasks: Eval tasks scored at every evaluation, comma-separated, as `jielong eval --tasks`: cmmlu, ceval, mmlu, tmmluplus (from --eval_data) or folders of CSVs, logged as eval/TASK/acc; drcd, cmrc2018 or KIND:FILE generation tasks, logged as their scores (eval/drcd/em …).
        eval_data: The folder holding cmmlu/, ceval/, mmlu/, tmmluplus/, drcd-dev.json, cmrc2018-dev.json for --eval_tasks.
        eval_shots: Solved examples before each --eval_tasks question.
        eval_limit: Score at most this many questions per subject of --eval_tasks.
        parallel: Under torchrun: ddp (a whole model per process), fsdp (FSDP2: weights, gradients and optimizer state sharded across processes, checkpoints sharded) or auto (DDP when the model's training state fits 60 percent of one GPU, else FSDP; DDP on a CPU).
        activation_checkpointing: Recompute each decoder block's activations in the backward pass: less memory, about a third more compute.
        cpu_offload: With --parallel fsdp on GPUs: keep the shards, gradients and optimizer step on the CPU.
    """

    steps: int = 1000
    batch_size: int = 16  # sequences per micro-batch, per process
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # the schedule ends at lr * min_lr_ratio
    warmup_steps: int = 50
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    decay_fraction: float = 0.2  # wsd: the share of steps spent decaying at the end
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_every: int = 100
    save_every: int = 200
    keep_checkpoints: int = 2
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    compile: bool = False
    peak_tflops: float | None = None  # MFU's denominator where jielong.train.throughput has none
    patience: int = 0  # 0: never stop early
    min_delta: float = 0.0
    keep_best: bool | None = None  # None: with patience or load_best_at_end; needs a val_loss
    load_best_at_end: bool = False
    eval_tasks: str | None = None  # scored at every evaluation (jielong.train.eval_tasks)
    eval_data: str = "data"
    eval_shots: int = 5
    eval_limit: int | None = None
    parallel: Literal["auto", "ddp", "fsdp"] = "auto"
    activation_checkpointing: bool = False
    cpu_offload: bool = False

    def validate(self) -> None:
        if self.patience < 0:
            raise UserError(f"--patience={self.patience} must be 0 (off) or more")
        if self.patience and not 1 <= self.eval_every < self.steps:
            raise UserError(f"--patience {self.patience} needs evaluations during training, but "
                            f"--eval_every={self.eval_every} with --steps={self.steps} has none; set "
                            f"--eval_every between 1 and {self.steps - 1}")
        if self.min_delta < 0:
            raise UserError(f"--min_delta={self.min_delta} must be 0 or more")
        if self.load_best_at_end and self.keep_best is False:
            raise UserError("--load_best_at_end needs the best checkpoint: drop --no-keep_best")
        for name in ("steps", "batch_size", "grad_accum", "eval_every", "save_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name}={getattr(self, name)} must be at least 1")
        if self.lr <= 0:
            raise UserError(f"--lr={self.lr} must be positive")
        if self.warmup_steps < 0:
            raise UserError(f"--warmup_steps={self.warmup_steps} must be 0 or more")
        if self.eval_shots < 0:
            raise UserError(f"--eval_shots={self.eval_shots} must be 0 or more")
        if self.peak_tflops is not None and self.peak_tflops <= 0:
            raise UserError(f"--peak_tflops={self.peak_tflops} must be positive (TFLOP/s per device)")
        if self.eval_limit is not None and self.eval_limit < 1:
            raise UserError(f"--eval_limit={self.eval_limit} must be 1 or more")
        if self.eval_tasks:  # every task file read now, before a stage's slow preparation
            check_tasks(self.eval_tasks, self.eval_data)


def context_length(requested: int | None, limit: int, option: str = "--seq_len",
                   minimum: int = 2) -> int:
    """The length a stage trains at: `requested`, or the model's whole context when None.

    Every stage calls this right after it knows the model's context and before any slow work
    (tokenizing, packing, training), so an impossible length is one line, not a traceback
    from the first forward pass.
    """
    if requested is None:
        return limit
    if not minimum <= requested <= limit:
        raise UserError(f"{option} {requested} does not fit: the model's context is {limit} tokens "
                        f"(max_position_embeddings); pass {option} between {minimum} and {limit}, "
                        f"or leave it out to use {limit}")
    return requested


class Stage(Protocol):
    def batch(self, step: int, micro: int, rank: int) -> dict[str, torch.Tensor]: ...
    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]: ...
    def evaluate(self, model: torch.nn.Module) -> dict[str, float]: ...


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay (or WSD: hold, then linear decay) to min_lr_ratio."""
    floor = cfg.lr * cfg.min_lr_ratio
    warmup = min(cfg.warmup_steps, cfg.steps)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "wsd":
        decay_start = int(cfg.steps * (1 - cfg.decay_fraction))
        if step < decay_start:
            return cfg.lr
        frac = (step + 1 - decay_start) / max(1, cfg.steps - decay_start)
        return cfg.lr - (cfg.lr - floor) * frac
    frac = (step - warmup) / max(1, cfg.steps - warmup)
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * min(1.0, frac)))


def _optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    # No weight decay on norms, biases (1-D) — standard since GPT-2 / Chinchilla recipes.
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    fused = device.type == "cuda"
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused)


class Metrics:
    """metrics.jsonl: one JSON object a line, flushed as written."""

    def __init__(self, path: Path, keep_until_step: int | None):
        self.path = path
        if keep_until_step is not None and path.exists():
            # Resuming: drop lines logged after the checkpoint, they will be logged again.
            lines = [ln for ln in path.read_text().splitlines()
                     if ln.strip() and json.loads(ln)["step"] <= keep_until_step]
            write_text(path, "".join(ln + "\n" for ln in lines))
        elif keep_until_step is None:
            path.unlink(missing_ok=True)
        self.f = open(path, "a")

    def log(self, **row) -> None:
        self.f.write(json.dumps(row) + "\n")
        self.f.flush()


class StopRequest:
    """SIGINT (Ctrl-C) and SIGTERM (a scheduler's kill) ask the loop to stop after the step
    in progress and save a checkpoint, so an interrupted run loses no finished step. A second
    signal restores the default behaviour, for a user who really wants out now."""

    def __init__(self):
        self.signum: int | None = None
        self.old: dict[int, object] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signals reach only that one
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # the second one: stop at once
            self.__exit__()
            raise KeyboardInterrupt
        self.signum = signum
        name = signal.Signals(signum).name
        print(f"\n{name}: stopping after this step and saving a checkpoint "
              "(send it again to stop at once)", flush=True)

    def __exit__(self, *exc) -> None:
        for sig, old in self.old.items():
            signal.signal(sig, old)
        self.old = {}

    def agreed(self, world: int, device: torch.device) -> bool:
        """Whether to stop now; under torchrun every rank stops at the same step."""
        if world == 1:
            return self.signum is not None
        flag = torch.tensor([float(self.signum is not None)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


class EarlyStopping:
    """The best validation loss so far, its step, and evaluations since it last improved.

    Its `state()` goes into trainer_state.pt with every checkpoint, so a resumed run stops at
    the very step the uninterrupted one would have.
    """

    def __init__(self, patience: int, min_delta: float, state: dict | None = None):
        self.patience, self.min_delta = patience, min_delta
        self.best: float | None = None
        self.best_step = 0
        self.waited = 0
        if state:
            self.best, self.best_step, self.waited = state["best"], state["best_step"], state["waited"]

    def state(self) -> dict:
        return {"best": self.best, "best_step": self.best_step, "waited": self.waited}

    def update(self, step: int, val_loss: float) -> bool:
        """Record one evaluation; True when it is a new best."""
        if self.best is None or val_loss < self.best - self.min_delta:
            self.best, self.best_step, self.waited = val_loss, step, 0
            return True
        self.waited += 1
        return False

    @property
    def exhausted(self) -> bool:
        return self.patience > 0 and self.waited >= self.patience


class Interrupted(KeyboardInterrupt):
    """The run stopped on signal `signum` after saving a checkpoint at `step`."""

    def __init__(self, step: int, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}")
        self.step, self.signum = step, signum


def check_layout(state: dict, cfg: TrainConfig, world: int, ckpt: Path) -> None:
    """A resumed run keeps its global batch (grad_accum × world micro-batches of batch_size
    sequences), whatever number of processes it resumes on."""
    was = state.get("train_config", {})
    g_was = was.get("grad_accum", cfg.grad_accum) * state.get("world", world)  # older checkpoints: as now
    b_was = was.get("batch_size", cfg.batch_size)
    if b_was != cfg.batch_size:
        raise UserError(f"{ckpt} was trained with --batch_size {b_was}; resume with the same")
    if g_was == cfg.grad_accum * world:
        return
    if g_was % world:
        raise UserError(f"{ckpt}: the run's global batch is {g_was} micro-batches of {b_was}, which "
                        f"{world} processes cannot share evenly; resume on a number of processes "
                        f"that divides {g_was}")
    raise UserError(f"{ckpt}: the run's global batch is {g_was} micro-batches of {b_was}; on {world} "
                    f"process{'es' if world > 1 else ''} resume with --grad_accum {g_was // world}")


def _save_lm(model, path: Path, tokenizer, trainer_state: dict) -> None:
    save_model(path, model, tokenizer, trainer_state)


def _load_lm(model, path: Path) -> None:
    model.load_state_dict(load_model(path).state_dict())


def fit(model: torch.nn.Module, stage: Stage, cfg: TrainConfig, run_dir: str | Path,
        tokenizer=None, resume: bool = False, desc: str = "train", save_fn=None,
        load_fn=None) -> dict:
    """Train `model` on `stage` for cfg.steps optimizer steps. Returns a summary dict.

    save_fn(model, path, tokenizer, trainer_state) writes a checkpoint directory (with
    trainer_state.pt in it) and load_fn(model, path) restores the weights from one; the
    default is a whole causal-LM directory. LoRA saves only its adapter, a classifier its
    head and body.
    """
    save_fn = save_fn or _save_lm
    load_fn = load_fn or _load_lm
    cfg.validate()
    run = Path(run_dir)
    device = pick_device(cfg.device)
    rank, world = init_distributed(device)
    main = rank == 0
    scorer = lm = None
    if cfg.eval_tasks:  # encoded and checked against the context before any step
        lm = language_model(model)
        if lm is None or tokenizer is None:
            raise UserError(f"--eval_tasks scores a language model's choices, but {desc} trains "
                            f"{'no language model' if lm is None else 'without a tokenizer'}; "
                            "leave --eval_tasks out")
        scorer = TaskScorer(cfg.eval_tasks, cfg.eval_data, cfg.eval_shots, cfg.eval_limit, tokenizer,
                            lm.config.max_position_embeddings)
        if main:
            print(f"eval tasks every {cfg.eval_every} steps: {scorer.describe()}")
    mode, why = choose(cfg.parallel, model, device, world)
    found = list_checkpoints(run)
    ckpt = found[-1] if resume and found else None
    if ckpt is not None:
        check_layout(load_trainer_state(ckpt), cfg, world, ckpt)
    if ckpt is not None and not is_sharded(ckpt) and mode == "fsdp":
        raise UserError(f"{ckpt} is a whole-model checkpoint (this run was not sharded); resume it "
                        "with --parallel ddp")
    # sharded (DCP) checkpoints under FSDP, when asked for, and for a run begun sharded
    sharded = mode == "fsdp" or cfg.parallel == "fsdp" or (ckpt is not None and is_sharded(ckpt))
    if mode == "fsdp" and any(v is model for v in vars(stage).values()):
        raise UserError(f"{desc} samples from the model it trains, which FSDP shards; use "
                        "--parallel ddp")
    if main and world > 1:
        print(f"parallel: {mode} on {world} processes ({why})")
    elif world == 1 and cfg.parallel == "fsdp":
        print("parallel: one process trains plainly; --parallel fsdp keeps its checkpoints sharded, "
              "so it can resume under torchrun")
    train_model = wrap(model, mode, device, world, cfg.activation_checkpointing, cfg.cpu_offload)
    opt = _optimizer(train_model, cfg, device)
    start = 0
    early = EarlyStopping(cfg.patience, cfg.min_delta)
    keep_best = cfg.keep_best if cfg.keep_best is not None else bool(cfg.patience or cfg.load_best_at_end)
    if ckpt is not None:
        state = load_trainer_state(ckpt)
        if is_sharded(ckpt):
            load_sharded(train_model, opt, ckpt)
        else:
            load_fn(model, ckpt)
            opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng_cpu"])
        if device.type == "cuda" and state.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(state["rng_cuda"], device)
        start = state["step"]
        early = EarlyStopping(cfg.patience, cfg.min_delta, state.get("early_stopping"))
        if main:
            print(f"resuming from {ckpt} (step {start}/{cfg.steps})")
    elif found and not resume:
        raise UserError(f"{run} already holds checkpoints from an earlier run; pass --resume to "
                        "continue it, or choose another --out")
    else:
        torch.manual_seed(cfg.seed)
    run.mkdir(parents=True, exist_ok=True)
    if main:  # a run killed mid-save leaves its half-written checkpoint under a hidden name
        for stale in [*(run / "checkpoints").glob(".step-*"), *(run / "checkpoints").glob(".best.*")]:
            shutil.rmtree(stale, ignore_errors=True)
        if not (resume and found):  # a best checkpoint left by a run killed before its first save
            shutil.rmtree(run / "checkpoints" / "best", ignore_errors=True)
    metrics = Metrics(run / "metrics.jsonl", start if resume else None) if main else None

    if cfg.compile:
        train_model = torch.compile(train_model)
    amp = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext())

    def early_stop_agreed(flag: bool) -> bool:
        """Rank 0 alone evaluates; under torchrun every rank stops where it says."""
        if world == 1:
            return flag
        t = torch.tensor([float(flag)], device=device)
        dist.broadcast(t, src=0)
        return bool(t.item())

    def to_dev(b: dict) -> dict:
        return {k: v.to(device, non_blocking=True) for k, v in b.items()}

    def save(step: int) -> None:
        trainer_state = {
            "step": step, "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "train_config": asdict(cfg), "early_stopping": early.state(), "world": world,
        }
        path = run / "checkpoints" / f"step-{step:07d}"
        if sharded:  # every rank writes its shards (with the optimizer's)
            save_sharded(train_model, opt, path, trainer_state)
        elif main:
            save_fn(model, path, tokenizer, {**trainer_state, "optimizer": opt.state_dict()})
        if main:
            for old in list_checkpoints(run)[:-cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        if world > 1:
            dist.barrier()

    best_dir = run / "checkpoints" / "best"

    def save_best(step: int, val_loss: float) -> None:
        # beside the step-N checkpoints, never listed by list_checkpoints (no resume from it)
        with atomic_dir(best_dir) as tmp:
            save_fn(model, tmp, tokenizer, {"step": step, "val_loss": val_loss})
            write_json(tmp / "best.json", {"step": step, "val_loss": val_loss})

    def evaluate(step: int) -> dict:
        result = {}
        model.eval()
        if mode == "fsdp":  # every rank runs the sharded model; rank 0 keeps the result
            train_model.eval()
            with torch.no_grad(), amp:
                result = stage.evaluate(train_model)
            train_model.train()
        elif main:
            with torch.no_grad(), amp:
                result = stage.evaluate(model)
        if scorer is not None and mode == "fsdp":  # rank 0 scores all, on the gathered weights
            consolidate(train_model, model)
            if main:
                result.update(scorer(lm, 0, 1))
        elif scorer is not None:  # every rank scores its share; in the weights' dtype, as `jielong eval`
            result.update(scorer(lm, rank, world))
        model.train()
        if not main:
            return {}
        metrics.log(step=step, **result)
        return result

    model.train()
    meter = throughput.Throughput(model, device, cfg, world, verbose=main)  # FLOPs/token, MFU, peak memory
    t0 = time.time()
    tokens = 0
    last_eval: dict = {}
    loss_val = float("nan")
    bar = tqdm(total=cfg.steps, initial=start, desc=desc, unit="step", disable=not main,
               dynamic_ncols=True)
    step = finished = start
    stopped_early = early.exhausted and start < cfg.steps  # resuming a run that stopped early
    with StopRequest() as stop:
        try:
            for step in range(start, start if stopped_early else cfg.steps):
                lr = lr_at(step, cfg)
                for g in opt.param_groups:
                    g["lr"] = lr
                loss_sum = torch.zeros((), device=device)
                step_tokens = 0
                for micro in range(cfg.grad_accum):
                    batch = to_dev(stage.batch(step, micro, rank))
                    with no_sync(train_model, micro == cfg.grad_accum - 1 or world == 1), amp:
                        loss, n = stage.loss(train_model, batch)
                        (loss / cfg.grad_accum).backward()
                    loss_sum += loss.detach()
                    step_tokens += n
                grad_norm = grad_norm_value(torch.nn.utils.clip_grad_norm_(train_model.parameters(),
                                                                           cfg.grad_clip))
                opt.step()
                opt.zero_grad(set_to_none=True)
                loss_avg = loss_sum / cfg.grad_accum
                if world > 1:
                    dist.all_reduce(loss_avg, op=dist.ReduceOp.AVG)
                loss_val = loss_avg.item()
                if not math.isfinite(loss_val):
                    raise UserError(f"loss became {loss_val} at step {step + 1}; lower --lr "
                                    f"(now {cfg.lr}) or raise --warmup_steps")
                tokens += step_tokens * world
                elapsed = time.time() - t0
                if main:
                    extra = {**(stage.step_metrics() if hasattr(stage, "step_metrics") else {}), **meter.step(batch)}
                    metrics.log(step=step + 1, loss=round(loss_val, 6), lr=lr,
                                grad_norm=round(grad_norm, 4), tokens=tokens,
                                tok_s=round(tokens / max(elapsed, 1e-9), 1), **extra)
                    bar.set_postfix(loss=f"{loss_val:.3f}", tok_s=f"{tokens / max(elapsed, 1e-9):,.0f}",
                                    **{k: f"{v:.3g}" for k, v in extra.items()}, refresh=False)
                    bar.update(1)
                done = finished = step + 1
                if done % cfg.eval_every == 0 or done == cfg.steps:
                    last_eval = evaluate(done)
                    if last_eval:
                        bar.write(f"step {done}: " + ", ".join(f"{k} {v:.4f}" for k, v in last_eval.items()))
                    improved = False
                    if main and "val_loss" in last_eval:
                        improved = early.update(done, float(last_eval["val_loss"])) and keep_best
                    elif main and cfg.patience:
                        raise UserError(f"--patience needs a validation loss, but this stage's "
                                        f"evaluation gave none ({', '.join(last_eval) or 'nothing'}); "
                                        "give it held-out data or leave --patience out")
                    if mode == "fsdp" and keep_best and early_stop_agreed(improved):
                        consolidate(train_model, model)  # every rank gathers, rank 0 saves
                    if improved:
                        save_best(done, float(last_eval["val_loss"]))
                    stopped_early = early_stop_agreed(early.exhausted and done < cfg.steps)
                stopping = stop.agreed(world, device)  # every rank asks, every step
                if stopping or stopped_early or done % cfg.save_every == 0 or done == cfg.steps:
                    save(done)
                if stopped_early:
                    break
                if stopping and done < cfg.steps:
                    raise Interrupted(done, stop.signum or signal.SIGINT)
        except KeyboardInterrupt as e:
            bar.close()
            if main and isinstance(e, Interrupted):
                print(f"stopped after step {e.step}/{cfg.steps}; checkpoint saved in "
                      f"{run / 'checkpoints' / f'step-{e.step:07d}'} (continue with --resume)")
            elif main:
                print(f"\ninterrupted at step {step}; the last checkpoint is in {run / 'checkpoints'} "
                      "(continue with --resume)")
            raise
    bar.close()
    if mode == "fsdp":
        consolidate(train_model, model)  # the stage's model gets the trained weights (rank 0)
    elif cfg.activation_checkpointing:
        uncheckpoint_blocks(model)
    elapsed = time.time() - t0
    summary = {"steps": finished, "loss": loss_val, **last_eval, "tokens": tokens,
               "seconds": round(elapsed, 1), "tok_s": round(tokens / max(elapsed, 1e-9), 1), **meter.summary()}
    if main and scorer is not None and last_eval:
        print(f"eval tasks at step {finished}: " + ", ".join(
            f"{k.removeprefix('eval/').replace('/', ' ')} {v:.4f}" for k, v in last_eval.items()
            if k.startswith("eval/")))
    if early.best is not None and (cfg.patience or keep_best):  # validation during training asked for
        summary.update(best_step=early.best_step, best_val=early.best, stopped_early=stopped_early)
        if main and finished > start:
            metrics.log(step=finished, best_step=early.best_step, best_val=early.best,
                        stopped_early=stopped_early)
        if main and stopped_early:
            print(f"early stopping at step {finished}/{cfg.steps}: val_loss has not improved by more than "
                  f"{cfg.min_delta} for {cfg.patience} evaluations; the best was "
                  f"{early.best:.4f} at step {early.best_step}")
        if cfg.load_best_at_end and (best_dir / "best.json").exists() and (main or mode != "fsdp"):
            load_fn(model, best_dir)  # the result is the best step's weights (FSDP: rank 0's)
            if main:
                print(f"loaded the best checkpoint (step {early.best_step}, val_loss "
                      f"{early.best:.4f}) as the result")
    return summary
