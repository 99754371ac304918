"""Direct preference optimisation: learn from pairs of replies, one preferred, without a
reward model (DPO, and its IPO and SimPO variants).

    jielong train dpo prefs.jsonl --model runs/sft/model --method lora --out runs/dpo

Data: preference JSONL (`jielong.data.preferences`): {"prompt", "chosen", "rejected"} pairs,
conversations with an implicit prompt, or rankings {"prompt", "responses": [best, …]}.
Each reply is rendered after its prompt with the chat template; only the reply's tokens and
its end-of-turn token count (`encode_response`). Pairs longer than `--max_len` are left out
and counted. Unless `--val` is given, `--val_fraction` of the prompts is held out with all
their pairs.

With π and r the summed log-probabilities of a reply under the policy and the reference
model, h = (π_chosen − r_chosen) − (π_rejected − r_rejected), and the losses per pair:

    sigmoid  −log σ(β·h)                            DPO (Rafailov et al. 2023); with
             −(1−ε)·log σ(β·h) − ε·log σ(−β·h)        --label_smoothing ε (conservative DPO)
    ipo      (h̄ − 1/(2β))²                          IPO (Azar et al. 2023, eq. 17), where h̄
             uses log-probabilities averaged per reply token, as TRL does and as the IPO authors
             confirmed to TRL: a sum would make the squared loss grow with reply length
    simpo    −log σ(β·(π̄_chosen − π̄_rejected) − γ)   SimPO (Meng et al. 2024): reference-free,
             average log-probabilities per token (π̄), a target margin γ

`--sft_weight α` adds α·(−π̄_chosen), the chosen reply's per-token negative log-likelihood, to
any of them (RPO: Pang et al. 2024, TRL's `rpo_alpha`). A preference loss only asks chosen to
beat rejected, which it can do by pushing both down; the likelihood term keeps chosen likely,
so what the chosen replies know (facts, format) is not lost on the way.

The logged rewards are β·(π − r) per reply (SimPO: its own implicit reward β·π̄); their
margin and accuracy (the share of pairs where chosen's reward is higher) are logged per step
and on the validation pairs.

The reference model is needed only for r, which never changes, so r is computed once for
every pair before training (`reference_logps`) and kept in memory and in OUT/ref_logps.pt
(a resumed run reads it back; the file records what it came from — the reference model's
files, the dtype, every token — so changed data or a retrained reference is computed
afresh). Hence no second model ever sits in memory while training:
with `--method lora` the reference is the same model with its adapters switched off, and
with `--method full` it is the model itself before its first step; only a different `--ref`
model is loaded, used for the cache, and freed before training starts.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import sys
import time
from array import array
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from tqdm import tqdm

from jielong.data.chat import IGNORE
from jielong.errors import UserError
from jielong.lora import LoraConfig, output_weight, using_adapter
from jielong.runtime import is_main_process
from jielong.train.classify import Sampler
from jielong.train.loop import TrainConfig, fit
from jielong.train.sft import checkpoint_fns

DPO_TRAIN = TrainConfig(lr=1e-6, warmup_steps=10, steps=200, batch_size=8, eval_every=50,
                        save_every=100)  # `train dpo` defaults (batch_size: pairs); lr: TRL's
DPO_LORA_LR = 1e-5  # with --method lora, unless --lr is given (10×, as SFT's LoRA default)
SIMPO_BETA = 2.0  # with --loss simpo, unless --beta is given (the SimPO paper uses 2 to 2.5)
REF_FILE = "ref_logps.pt"

Row = tuple[list[int], list[int]]  # (ids, labels): labels aligned with ids, IGNORE off the reply

# ------------------------------------------------------------------------------ log-probs


class _TokenLogProbs(torch.autograd.Function):
    """log softmax(hidden @ weight.T)[target] per row, chunk by chunk, never holding the
    (rows × vocab) probabilities for the backward pass. d logp/d h = w[t] − p·W is (rows ×
    hidden), so it is formed in the forward pass and kept; the head's own gradient
    Σ g·(onehot − p)ᵀh needs p again, so a trained head recomputes it chunk by chunk."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk: int):
        w = weight.to(hidden.dtype)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        out = torch.empty(len(targets), dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(out)
        d_hidden = torch.empty_like(hidden) if need_h else None
        for i in range(0, len(targets), chunk):
            h, t = hidden[i:i + chunk], targets[i:i + chunk]
            logits = (h @ w.T).float()
            lse[i:i + chunk] = logits.logsumexp(-1)
            out[i:i + chunk] = logits.gather(1, t[:, None])[:, 0] - lse[i:i + chunk]
            if need_h:
                p = (logits - lse[i:i + chunk, None]).exp_().to(h.dtype)
                d_hidden[i:i + chunk] = w[t] - p @ w
        ctx.chunk, ctx.need_w = chunk, need_w
        ctx.save_for_backward(d_hidden, hidden if need_w else None, weight if need_w else None,
                              targets, lse)
        return out

    @staticmethod
    def backward(ctx, g):
        d_hidden, hidden, weight, targets, lse = ctx.saved_tensors
        grad_h = (d_hidden * g[:, None].to(d_hidden.dtype)) if d_hidden is not None else None
        grad_w = None
        if ctx.need_w:
            w = weight.to(hidden.dtype)
            gh = hidden.float() * g[:, None]
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            grad_w.index_add_(0, targets, gh)
            for i in range(0, len(targets), ctx.chunk):
                p = ((hidden[i:i + ctx.chunk] @ w.T).float() - lse[i:i + ctx.chunk, None]).exp_()
                grad_w -= p.T @ gh[i:i + ctx.chunk]
            grad_w = grad_w.to(weight.dtype)
        return grad_h, grad_w, None, None


def token_logps(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                chunk: int = 1024) -> torch.Tensor:
    """(N,) float32 log-probabilities of `targets` (N,) under softmax(hidden @ weight.T);
    hidden: (N, H), weight: (V, H)."""
    return _TokenLogProbs.apply(hidden, weight, targets, chunk)


def sequence_logps(model, ids: torch.Tensor, labels: torch.Tensor,
                   chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the log-probabilities of the labelled tokens, their count) per row of a
    right-padded batch. ids, labels: (B, T), labels aligned with ids (a token's log-prob is
    read from the hidden state before it), IGNORE where nothing counts."""
    hidden = model(ids, hidden_only=True)
    targets = labels[:, 1:]
    keep = targets != IGNORE
    logp = token_logps(hidden[:, :-1][keep], output_weight(model), targets[keep], chunk)
    rows = keep.nonzero()[:, 0]
    sums = torch.zeros(ids.shape[0], dtype=torch.float32, device=ids.device).index_add(0, rows, logp)
    return sums, keep.sum(1)


def pad_rows(rows: Sequence[Row], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, labels), both (B, longest), right-padded with pad_id and IGNORE."""
    T = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), T), IGNORE, dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, :len(x)] = torch.tensor(x, dtype=torch.long)
        labels[i, :len(y)] = torch.tensor(y, dtype=torch.long)
    return ids, labels


# --------------------------------------------------------------------------------- losses


@dataclass
class Objective:
    """Which preference loss, and its constants."""

    loss: Literal["sigmoid", "ipo", "simpo"] = "sigmoid"
    beta: float = 0.1
    label_smoothing: float = 0.0  # sigmoid only: the share of labels taken to be flipped
    gamma: float = 1.0  # simpo only: the target reward margin
    sft_weight: float = 0.0  # any loss: + this × the chosen reply's per-token NLL

    @property
    def uses_reference(self) -> bool:
        return self.loss != "simpo"


def preference_loss(obj: Objective, policy: torch.Tensor, ref: torch.Tensor,
                    counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss per pair, chosen rewards, rejected rewards). policy, ref, counts: (2B,) summed
    log-probs and reply token counts, the B chosen replies first."""
    pc, pr = policy.float().chunk(2)
    rc, rr = ref.float().chunk(2)
    nc, nr = counts.clamp(min=1).float().chunk(2)
    if obj.loss == "simpo":
        chosen, rejected = obj.beta * pc / nc, obj.beta * pr / nr
        losses = -F.logsigmoid(chosen - rejected - obj.gamma)
    else:
        chosen, rejected = obj.beta * (pc - rc), obj.beta * (pr - rr)
        if obj.loss == "ipo":
            h = (pc - rc) / nc - (pr - rr) / nr
            losses = (h - 1 / (2 * obj.beta)) ** 2
        else:
            h = (pc - rc) - (pr - rr)
            eps = obj.label_smoothing
            losses = -(1 - eps) * F.logsigmoid(obj.beta * h) - eps * F.logsigmoid(-obj.beta * h)
    if obj.sft_weight:
        losses = losses - obj.sft_weight * pc / nc
    return losses, chosen.detach(), rejected.detach()


# ------------------------------------------------------------------------------ reference


@torch.no_grad()
def reference_logps(model, rows: Sequence[Row], pad_id: int, batch_size: int,
                    desc: str = "reference log-probs") -> torch.Tensor:
    """(N,) summed log-probs of each row's labelled tokens, in eval mode, batched by length."""
    device = next(model.parameters()).device
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    was_training = model.training
    model.eval()
    out = torch.zeros(len(rows), dtype=torch.float32)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    bar = tqdm(total=len(rows), desc=desc, unit=" seqs", leave=False,
               disable=not sys.stderr.isatty() or not is_main_process())
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        ids, labels = pad_rows([rows[j] for j in idx], pad_id)
        with amp:
            sums, _ = sequence_logps(model, ids.to(device), labels.to(device))
        out[idx] = sums.float().cpu()
        bar.update(len(idx))
    bar.close()
    model.train(was_training)
    return out


def cache_key(kind: str, ref_name: str, dtype: torch.dtype, groups: dict[str, Sequence[Row]]) -> str:
    """What the cached log-probs depend on: the reference model's files (path, sizes, times),
    its dtype and every token and label of the data."""
    from jielong.checkpoint import weight_files
    from jielong.hub import resolve_model

    path = resolve_model(ref_name).resolve()
    stats = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in weight_files(path)]
    h = hashlib.sha256(json.dumps([kind, str(path), stats, str(dtype)]).encode())
    for name, rows in sorted(groups.items()):
        h.update(name.encode())
        for ids, labels in rows:
            h.update(array("q", ids).tobytes() + b"|" + array("q", labels).tobytes() + b";")
    return h.hexdigest()


def cached_reference(path: Path, key: str,
                     compute: Callable[[], dict[str, torch.Tensor]]) -> tuple[dict, bool]:
    """(log-probs by group, read from disk?): the file at `path` when it was written for
    `key`, else compute() saved there atomically."""
    from jielong.files import atomic_path

    if path.exists():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if saved.get("key") == key:
                return saved["logps"], True
        except (OSError, RuntimeError, EOFError, AttributeError):
            pass  # unreadable: compute again
    logps = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"key": key, "logps": logps}, tmp)
    return logps, False


def compute_reference(net, method: str, ref: str | None, groups: dict[str, Sequence[Row]],
                      pad_id: int, batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Reference log-probs of every group's rows. No `ref`: the policy itself before training
    (with --method lora, its base: adapters off). A `ref` model is loaded for this alone
    and is garbage once this returns."""
    if ref is None:
        net.to(device)
        with using_adapter(net, None) if method == "lora" else nullcontext():
            return {k: reference_logps(net, rows, pad_id, batch_size, f"reference log-probs ({k})")
                    for k, rows in groups.items()}
    from jielong.hub import open_model

    other, _, _ = open_model(ref, device=device, dtype=next(net.parameters()).dtype)
    if other.config.vocab_size != net.config.vocab_size:
        raise UserError(f"--ref {ref}: vocabulary of {other.config.vocab_size:,} tokens, but the "
                        f"model's has {net.config.vocab_size:,}; the reference must share the "
                        "model's tokenizer")
    return {k: reference_logps(other, rows, pad_id, batch_size, f"reference log-probs ({k})")
            for k, rows in groups.items()}


def reference_for(run: Path, kind: str, net, method: str, model: str, ref: str | None,
                  groups: dict[str, Sequence[Row]], pad_id: int, batch_size: int,
                  device: torch.device) -> dict[str, torch.Tensor]:
    """Reference log-probs from OUT/ref_logps.pt, or computed and saved there (rank 0 first;
    the other processes then read the file)."""
    from jielong.runtime import main_process_first

    key = cache_key(kind, ref or model, next(net.parameters()).dtype, groups)
    t0 = time.time()
    with main_process_first():
        logps, loaded = cached_reference(run / REF_FILE, key, lambda: compute_reference(
            net, method, ref, groups, pad_id, 2 * batch_size, device))
    gc.collect()  # a separate --ref model is unreachable now; free it before training
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if is_main_process():
        n = sum(len(v) for v in logps.values())
        source = (ref if ref else "the base model, adapters off" if method == "lora"
                  else "the model before training")
        print(f"reference log-probs: {'read' if loaded else 'computed'} for {n:,} sequences "
              f"({source}){'' if loaded else f' in {time.time() - t0:.1f} s'}; "
              f"{run / REF_FILE}")
    return logps


# ---------------------------------------------------------------------------------- stage


class DPOStage:
    """The loop's stage: batches of pairs, chosen and rejected right-padded together as one
    (2B, T) batch (chosen first), with their cached reference log-probs."""

    def __init__(self, train: list[tuple[Row, Row]], val: list[tuple[Row, Row]],
                 ref_train: torch.Tensor | None, ref_val: torch.Tensor | None, pad_id: int,
                 obj: Objective, cfg: TrainConfig, world: int = 1):
        if not train:
            raise UserError("no training pairs; give preference data (or lower --val_fraction)")
        self.train, self.val, self.pad_id, self.obj = train, val, pad_id, obj
        no_ref = torch.zeros  # SimPO: there is no reference
        self.ref_train = ref_train if ref_train is not None else no_ref(len(train), 2)
        self.ref_val = ref_val if ref_val is not None else no_ref(len(val), 2)
        self.batch_size = cfg.batch_size
        self.sampler = Sampler(len(train), cfg.batch_size, cfg.grad_accum, world, cfg.seed)
        self._sums: dict[str, float] = {}
        self._n = 0

    def _batch(self, pairs: Sequence[tuple[Row, Row]], ref: torch.Tensor) -> dict[str, torch.Tensor]:
        ids, labels = pad_rows([c for c, _ in pairs] + [r for _, r in pairs], self.pad_id)
        return {"input_ids": ids, "labels": labels, "ref": torch.cat([ref[:, 0], ref[:, 1]]),
                "lengths": torch.tensor([len(c[0]) + len(r[0]) for c, r in pairs])}

    def batch(self, step: int, micro: int, rank: int) -> dict[str, torch.Tensor]:
        idx = self.sampler.indices(step, micro, rank)
        return self._batch([self.train[i] for i in idx], self.ref_train[idx])

    def _forward(self, model, batch) -> tuple[torch.Tensor, dict[str, float]]:
        policy, counts = sequence_logps(model, batch["input_ids"], batch["labels"])
        losses, chosen, rejected = preference_loss(self.obj, policy, batch["ref"], counts)
        stats = {"rewards/chosen": chosen.mean().item(), "rewards/rejected": rejected.mean().item(),
                 "rewards/margin": (chosen - rejected).mean().item(),
                 "rewards/accuracy": (chosen > rejected).float().mean().item()}
        return losses, stats

    def loss(self, model, batch) -> tuple[torch.Tensor, int]:
        losses, stats = self._forward(model, batch)
        for k, v in stats.items():
            self._sums[k] = self._sums.get(k, 0.0) + v
        self._n += 1
        return losses.mean(), int(batch["lengths"].sum())

    def step_metrics(self) -> dict[str, float]:
        """The step's rewards, averaged over its micro-batches (this process's)."""
        out = {k: round(v / max(1, self._n), 5) for k, v in self._sums.items()}
        self._sums, self._n = {}, 0
        return out

    def evaluate(self, model) -> dict[str, float]:
        if not self.val:
            return {}
        device = next(model.parameters()).device
        totals: dict[str, float] = {}
        for i in range(0, len(self.val), self.batch_size):
            part = self.val[i:i + self.batch_size]
            b = {k: v.to(device) for k, v in self._batch(part, self.ref_val[i:i + len(part)]).items()}
            losses, stats = self._forward(model, b)
            for k, v in {"loss": losses.mean().item(), **stats}.items():
                totals[k] = totals.get(k, 0.0) + v * len(part)
        return {f"val_{k}": v / len(self.val) for k, v in totals.items()}


# ---------------------------------------------------------------------------- the command


def encode_rows(tok, items: Sequence, replies: Callable, max_len: int,
                desc: str = "tokenizing") -> tuple[list, list, int]:
    """(items kept, their encodings, how many were left out as longer than max_len): each
    item's replies (`replies(item)` → [reply, …]) encoded after its prompt as (ids, labels)."""
    from jielong.data.preferences import encode_response

    kept, out, skipped = [], [], 0
    for it in tqdm(items, desc=desc, unit=" rows", disable=not sys.stderr.isatty(), leave=False):
        try:
            rows = tuple(encode_response(tok, it.prompt, r) for r in replies(it))
        except UserError as e:
            raise UserError(f"{it.where}: {e}") from None
        if any(len(ids) > max_len for ids, _ in rows):
            skipped += 1
            continue
        kept.append(it)
        out.append(rows)
    return kept, out, skipped


def setup(model: str, ref: str | None, method: str, lora: LoraConfig, dtype: str, max_len: int | None,
          resume: bool, out: str, train: TrainConfig, default_lr: float):
    """Shared start of `train dpo` and `train kto`: (policy, tokenizer, generation config,
    train config, device, world size, pad id, ref or None). `default_lr` is the command's
    own, replaced by the LoRA default when --method lora and no --lr is given."""
    from jielong.checkpoint import list_checkpoints
    from jielong.runtime import init_distributed, pick_device
    from jielong.train.loop import context_length
    from jielong.train.sft import prepare_model

    if method == "lora" and train.lr == default_lr:
        train = replace(train, lr=DPO_LORA_LR)
        if is_main_process():
            print(f"learning rate {DPO_LORA_LR:g}, the LoRA default (--lr sets another)")
    train.validate()
    if list_checkpoints(out) and not resume:  # say so before the reference pass, not after
        raise UserError(f"{out} already holds checkpoints from an earlier run; pass --resume to "
                        "continue it, or choose another --out")
    device = pick_device(train.device)
    _, world = init_distributed(device)
    torch.manual_seed(train.seed)  # LoRA's initial A: a rerun (or an uninterrupted run) matches
    net, tok, gen = prepare_model(model, method, lora, dtype, device)
    max_len = context_length(max_len, net.config.max_position_embeddings, "--max_len")
    pad = net.config.pad_token_id if net.config.pad_token_id is not None else tok.eos_id
    if ref is not None and Path(ref).expanduser().resolve() == Path(model).expanduser().resolve():
        ref = None
    return net, tok, gen, train, device, world, pad, ref, max_len


def finish(title: str, net, tok, gen, run: Path, method: str, model: str,
           summary: dict, keys: tuple[str, str], line: str) -> dict:
    """Write the model or adapter and the curve; print the summary line."""
    from jielong.plots import loss_curve
    from jielong.train.sft import save_result

    path = save_result(net, tok, gen, run, method, str(model))
    loss_curve(run / "metrics.jsonl", run / "loss.png", title=title)
    val = "" if keys[0] not in summary else line.format(*(summary[k] for k in keys))
    print(f"done: {summary['steps']} steps, loss {summary['loss']:.4f}{val}, "
          f"{summary['tok_s']:,.0f} tokens/s\n{'adapter' if method == 'lora' else 'model'}: "
          f"{path}  curve: {run / 'loss.png'}")
    return {**summary, "path": str(path), "curve": str(run / "loss.png")}


def dpo(
    data: list[str],
    model: str = "runs/sft/model",
    ref: str | None = None,
    out: str = "runs/dpo",
    method: Literal["full", "lora"] = "full",
    loss: Literal["sigmoid", "ipo", "simpo"] = "sigmoid",
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    gamma: float = 1.0,
    sft_weight: float = 0.0,
    val: list[str] | None = None,
    val_fraction: float = 0.1,
    system: str | None = None,
    max_len: int | None = None,
    dtype: str = "auto",
    resume: bool = False,
    train: TrainConfig = DPO_TRAIN,
    lora: LoraConfig = LoraConfig(),  # noqa: B008 (never mutated)
) -> dict:
    """Align a model with preference pairs (DPO, IPO or SimPO), without a reward model.

    Args:
        data: Preference JSONL files: {"prompt", "chosen", "rejected"} or {"prompt", "responses"} rows.
        model: Model to align (usually the SFT model): a jielong or Hugging Face directory, or a hub id.
        ref: Reference model (default: the model itself, before training; with --method lora, its base).
        out: Run directory (checkpoints, metrics.jsonl, loss.png, ref_logps.pt, model/ or adapter/).
        method: full (every weight) or lora (frozen base, low-rank adapters).
        loss: sigmoid (DPO), ipo (IPO, per-token averages) or simpo (SimPO, reference-free).
        beta: How far from the reference the policy may move (IPO: its τ; SimPO: reward scale, default 2).
        label_smoothing: sigmoid only: the share of labels assumed flipped (conservative DPO; below 0.5).
        gamma: simpo only: the target margin between chosen and rejected rewards.
        sft_weight: Add this × the chosen reply's per-token NLL to the loss (RPO; 1.0 is usual), to keep what SFT taught.
        val: Validation JSONL files (default: hold out --val_fraction of the prompts).
        val_fraction: Share of distinct prompts held out, with all their pairs, when --val is not given.
        system: System prompt for prompts that have none.
        max_len: Tokens per prompt + reply (default: the model's context); longer pairs are left out (and counted).
        dtype: Weights' dtype: auto (float32, or the checkpoint's for LoRA on a GPU), float32, bfloat16.
        resume: Continue from the last checkpoint in OUT (the reference log-probs are read back).
        train: Optimisation settings (steps, batch size in pairs, learning rate, …).
        lora: LoRA settings (rank, alpha, dropout, target modules), used with --method lora.
    """
    from jielong.data.preferences import read_pairs
    from jielong.train.reward import split_by_prompt
    from jielong.train.sft import summarize_params

    if loss == "simpo" and beta == 0.1:
        beta = SIMPO_BETA
        print(f"β {SIMPO_BETA:g}, the SimPO default (--beta sets another)")
    obj = Objective(loss, beta, label_smoothing, gamma, sft_weight)
    if not (math.isfinite(beta) and beta > 0):
        raise UserError(f"--beta={beta} must be a positive number (0.1 is usual for DPO)")
    if not 0 <= label_smoothing < 0.5:
        raise UserError(f"--label_smoothing={label_smoothing} must be in [0, 0.5)")
    if label_smoothing and loss != "sigmoid":
        raise UserError(f"--label_smoothing applies to --loss sigmoid only, not {loss}")
    if not (math.isfinite(sft_weight) and sft_weight >= 0):
        raise UserError(f"--sft_weight={sft_weight} must be 0 or more (1.0 is usual; 0 turns it off)")
    if ref is not None and loss == "simpo":
        raise UserError("--ref has no use with --loss simpo: SimPO needs no reference model")
    if not 0 <= val_fraction < 1:
        raise UserError(f"--val_fraction={val_fraction} must be in [0, 1)")
    pairs = read_pairs(data, system)
    if val:
        held = read_pairs(val, system)
    else:
        pairs, held = split_by_prompt(pairs, val_fraction, train.seed)
    net, tok, gen, train, device, world, pad, ref, max_len = setup(
        model, ref, method, lora, dtype, max_len, resume, out, train, DPO_TRAIN.lr)
    both = lambda p: (p.chosen, p.rejected)  # noqa: E731
    _, train_set, cut = encode_rows(tok, pairs, both, max_len)
    _, val_set, cut_val = encode_rows(tok, held, both, max_len, "tokenizing val")
    if not train_set:
        raise UserError(f"every training pair is longer than --max_len {max_len} tokens; raise it")
    run = Path(out)
    ref_train = ref_val = None
    if obj.uses_reference:
        groups = {"train": [r for pair in train_set for r in pair],
                  "val": [r for pair in val_set for r in pair]}
        logps = reference_for(run, "dpo", net, method, model, ref, groups, pad, train.batch_size,
                              device)
        ref_train, ref_val = logps["train"].view(-1, 2), logps["val"].view(-1, 2)
    stage = DPOStage(train_set, val_set, ref_train, ref_val, pad, obj, train, world)
    main = is_main_process()
    if main:
        print(f"dpo ({method}, {loss} loss, β {beta:g}): {len(train_set):,} train / "
              f"{len(val_set):,} validation pairs, {stage.sampler.epochs(train.steps):.1f} epochs; "
              f"{summarize_params(net)}")
        if cut or cut_val:
            print(f"note: left out {cut + cut_val:,} pairs longer than --max_len {max_len} tokens")
    save_fn, load_fn = checkpoint_fns(method)
    summary = fit(net, stage, train, run, tokenizer=tok, resume=resume, desc=f"dpo-{method}",
                  save_fn=save_fn, load_fn=load_fn)
    if not main:
        return summary
    return finish(f"{loss} preference loss ({method})", net, tok, gen, run, method, model,
                  summary, ("val_rewards/accuracy", "val_rewards/margin"),
                  "; validation reward accuracy {:.3f}, margin {:.3f}")
