"""How the training loop spreads one model over the processes torchrun starts: plainly (one
process), DDP (every process holds the whole model and averages gradients) or FSDP2 (every
process holds a shard of each weight, gradient and AdamW moment), and the checkpoints of a
sharded run.

    mode, why = choose(cfg.parallel, model, device, world)   # "plain" | "ddp" | "fsdp"
    train_model = wrap(model, mode, device, world, checkpointing, cpu_offload)
    save_sharded(train_model, opt, RUN/checkpoints/step-N, trainer_state)   # every rank
    load_sharded(train_model, opt, RUN/checkpoints/step-N)                  # on any world size
    consolidate(train_model, model)                  # rank 0's `model` gets the full weights

`--parallel auto` picks DDP when the weights, gradients and AdamW state (16 bytes a
parameter in fp32: 4 + 4 + 8) fit in 60% of one GPU's memory, leaving the rest to
activations, else FSDP; on a CPU (gloo) DDP. One process trains plainly whatever is asked.

FSDP2 is `torch.distributed.fsdp.fully_shard` applied to each decoder block, then to the
root (embeddings, final norm, head), as the FSDP2 tutorial and torchtitan's llama do: a
block's weights are all-gathered just before it runs and freed after, its gradients
reduce-scattered as soon as its backward is done. On CUDA the policy is bf16 weights and
compute with fp32 gradient reduction (`MixedPrecisionPolicy(param_dtype=bfloat16,
reduce_dtype=float32)`), the shards themselves stay fp32 (the optimizer's master copy);
`--cpu_offload` keeps the shards, their gradients and the optimizer step on the CPU
(`CPUOffloadPolicy`). On a CPU both are moot: training is fp32, and the weights are there.

FSDP trains a copy of the model (`copy.deepcopy`, sharded as soon as it is made): the
model the stage built stays a plain module, so saving a Hugging Face directory, a LoRA
adapter or the best checkpoint works unchanged once `consolidate` has gathered the full
weights into it, on rank 0, which alone writes results; the other ranks move theirs to the
meta device (no memory). On a GPU rank 0's copy is in host memory, 4 bytes a parameter.
Evaluation runs the sharded copy on every rank.

Sharded checkpoints are `torch.distributed.checkpoint` (DCP) folders: every rank writes its
shards of the model and optimizer state (`get_state_dict` names them by parameter path, not
by position), rank 0 adds trainer_state.pt; the folder is written under a hidden name and
renamed into place, so a killed save leaves nothing `--resume` would pick. DCP reshards on
load, so a run saved by 2 processes resumes on 1 or 4.

`--activation_checkpointing` recomputes each block's activations in the backward pass
(`torch.utils.checkpoint`, non-reentrant) instead of keeping them: less memory, a third
more compute; with or without FSDP, the losses and gradients are the same.

(torch.distributed's checkpoint and FSDP modules are imported where used: they take a second
or two to import, which every `jielong` command would pay.)
"""

from __future__ import annotations

import copy
import os
import shutil
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.checkpoint import checkpoint

from jielong.checkpoint import TRAINER_STATE
from jielong.errors import UserError

BYTES_PER_PARAM = 16  # fp32 weight + gradient + AdamW's two moments
DDP_SHARE = 0.6  # of one device's memory, the rest left to activations
DCP_METADATA = ".metadata"  # what dcp.save writes last: a sharded checkpoint has it


def choose(parallel: str, model: torch.nn.Module, device: torch.device, world: int) -> tuple[str, str]:
    """(plain | ddp | fsdp, why) for `--parallel auto|ddp|fsdp` on `world` processes."""
    if parallel not in ("auto", "ddp", "fsdp"):
        raise UserError(f"--parallel {parallel}: choose auto, ddp or fsdp")
    if world == 1:
        return "plain", "one process"
    if parallel != "auto":
        return parallel, f"--parallel {parallel}"
    if device.type != "cuda":
        return "ddp", f"--parallel auto on {device.type}: DDP"
    n = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    need, have = n * BYTES_PER_PARAM, torch.cuda.get_device_properties(device).total_memory
    fits = need <= DDP_SHARE * have
    return ("ddp" if fits else "fsdp"), (
        f"--parallel auto: {n / 1e6:,.0f}M parameters need {need / 2**30:.1f} GiB for weights, "
        f"gradients and AdamW state, {'within' if fits else 'more than'} {DDP_SHARE:.0%} of one "
        f"GPU's {have / 2**30:.0f} GiB")


def checkpoint_blocks(model: torch.nn.Module) -> None:
    """Recompute each decoder block's activations in the backward pass instead of storing
    them. The blocks keep their names (no wrapper module): checkpoints do not change."""
    for block in model.model.layers:
        inner = block.forward

        def forward(*args, _inner=inner, **kwargs):
            if not torch.is_grad_enabled():  # evaluation: nothing to save or recompute
                return _inner(*args, **kwargs)
            return checkpoint(_inner, *args, use_reentrant=False, **kwargs)

        block.forward = forward


def uncheckpoint_blocks(model: torch.nn.Module) -> None:
    for block in model.model.layers:
        block.__dict__.pop("forward", None)


def wrap(model: torch.nn.Module, mode: str, device: torch.device, world: int,
         activation_checkpointing: bool = False, cpu_offload: bool = False) -> torch.nn.Module:
    """The module the loop trains: `model` itself (plain), DDP around it, or a sharded copy."""
    if activation_checkpointing and not hasattr(getattr(model, "model", None), "layers"):
        raise UserError("--activation_checkpointing recomputes decoder blocks, but this stage's "
                        "model has none (model.model.layers); leave it out")
    if mode == "fsdp":
        return shard(model, device, world, activation_checkpointing, cpu_offload)
    if cpu_offload and (not dist.is_initialized() or dist.get_rank() == 0):
        print(f"note: --cpu_offload is FSDP's; ignored when training {'with DDP' if mode == 'ddp' else 'plainly'}")
    model.to(device)
    if activation_checkpointing:
        checkpoint_blocks(model)
    if mode == "ddp":
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model


def shard(model: torch.nn.Module, device: torch.device, world: int,
          activation_checkpointing: bool, cpu_offload: bool) -> torch.nn.Module:
    """FSDP2: a copy of `model`, `fully_shard`ed block by block, then at the root."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import (
        CPUOffloadPolicy,
        MixedPrecisionPolicy,
        OffloadPolicy,
        fully_shard,
    )

    if not hasattr(getattr(model, "model", None), "layers"):
        raise UserError("--parallel fsdp shards a model's decoder blocks (model.model.layers); this "
                        "stage's model has none: use --parallel ddp")
    cuda = device.type == "cuda"
    if cpu_offload and not cuda and dist.get_rank() == 0:
        print("note: --cpu_offload is ignored on a CPU: the shards are there already")
    kwargs = {
        "mesh": init_device_mesh(device.type, (world,)),
        "mp_policy": (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
                      if cuda else MixedPrecisionPolicy()),
        "offload_policy": CPUOffloadPolicy() if cpu_offload and cuda else OffloadPolicy(),
    }
    copy_ = copy.deepcopy(model)
    if activation_checkpointing:
        checkpoint_blocks(copy_)
    for block in copy_.model.layers:
        fully_shard(block, **kwargs)
    fully_shard(copy_, **kwargs)  # the root: embeddings, final norm, head
    if dist.get_rank() != 0:  # only rank 0 writes results: the others' plain copy goes
        model.to("meta")
    return copy_


def no_sync(train_model: torch.nn.Module, sync: bool):
    """The context of one micro-batch's backward: gradients are averaged across processes
    only on the last micro-batch of a step (DDP's no_sync, FSDP2's requires_gradient_sync)."""
    if hasattr(train_model, "set_requires_gradient_sync"):  # FSDP2
        train_model.set_requires_gradient_sync(sync)
        return nullcontext()
    if sync or not hasattr(train_model, "no_sync"):
        return nullcontext()
    return train_model.no_sync()


def grad_norm_value(norm: torch.Tensor) -> float:
    """clip_grad_norm_'s total norm as a float; under FSDP2 it is a DTensor (a partial norm
    per rank) until `full_tensor()` reduces it."""
    full = getattr(norm, "full_tensor", None)
    return float(full() if full is not None else norm)


def is_sharded(path: Path) -> bool:
    return (Path(path) / DCP_METADATA).exists()


def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # frozen weights (a LoRA base) are the base model's, never trained: not in checkpoints
    return StateDictOptions(ignore_frozen_params=True)


def _sync() -> None:
    if dist.is_initialized():
        dist.barrier()


def save_sharded(train_model: torch.nn.Module, opt: torch.optim.Optimizer, path: Path,
                 trainer_state: dict) -> None:
    """Every rank writes its shards of the trained weights and optimizer state to `path`
    (a DCP folder), rank 0 the trainer state last; written under a hidden name first."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    main = not dist.is_initialized() or dist.get_rank() == 0
    tmp = path.with_name(f".{path.name}.tmp")
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _sync()
    model_sd, optim_sd = get_state_dict(train_model, opt, options=_options())
    with warnings.catch_warnings():  # one process: "assuming the intent is to save in a single process"
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=tmp, no_dist=not dist.is_initialized())
    _sync()
    if main:
        torch.save(trainer_state, tmp / TRAINER_STATE)
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    _sync()


def load_sharded(train_model: torch.nn.Module, opt: torch.optim.Optimizer, path: Path) -> None:
    """Fill the trained weights and the optimizer state from a DCP folder, however many
    processes wrote it (DCP reshards to this run's shards)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(train_model, opt, options=_options())
    state = {"model": model_sd, "optim": optim_sd}
    with warnings.catch_warnings():  # one process: "assuming the intent is to load in a single process"
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=path, no_dist=not dist.is_initialized())
    set_state_dict(train_model, opt, model_state_dict=state["model"],
                   optim_state_dict=state["optim"], options=_options())


def consolidate(train_model: torch.nn.Module, model: torch.nn.Module) -> None:
    """Gather a sharded copy's full weights into the plain `model`, on rank 0 only (the
    others get nothing: a full copy per process is what FSDP avoids). Every rank calls it.
    Without FSDP the two share their weights already."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if train_model is model or getattr(train_model, "module", None) is model:
        return
    full = get_model_state_dict(train_model, options=StateDictOptions(full_state_dict=True,
                                                                      cpu_offload=True))
    if dist.get_rank() == 0:
        with torch.no_grad():
            model.load_state_dict(full)
