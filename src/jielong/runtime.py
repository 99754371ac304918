"""Where a run executes: the device, the distributed process group, and which process is
the main one (rank 0 prints, writes and saves; the others wait for it where it matters).

Shared by training, inference and serving, so none of them imports another for it.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch
import torch.distributed as dist

from jielong.errors import UserError


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    if name == "cuda" and "LOCAL_RANK" in os.environ:  # under torchrun: each rank its own GPU
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device(name)


def init_distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world size); starts the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def finish_distributed() -> None:
    """Wait for every rank, then close the process group (when torchrun started one): a rank
    that leaves early while another still works can abort in gloo's threads at exit."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


@contextmanager
def main_process_first():
    """Rank 0 runs the block first (e.g. tokenizing the corpus), then the others, who find
    its results on disk."""
    multi = dist.is_initialized() and dist.get_world_size() > 1
    if multi and dist.get_rank() != 0:
        dist.barrier()
    yield
    if multi and dist.get_rank() == 0:
        dist.barrier()


def is_main_process() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0
