"""Where a run executes: the device, the distributed process group, which process is the
main one (rank 0 prints, writes and saves; the others wait for it where it matters), and the
memory a decoding process asks for (`decoding_memory`).

Shared by training, inference and serving, so none of them imports another for it.
"""

from __future__ import annotations

import ctypes
import os
import sys
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


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
KEEP_BYTES = 1 << 30  # freed memory glibc keeps for reuse instead of handing back


@contextmanager
def decoding_memory():
    """Load a model that will decode on a Linux CPU inside this: torch's large allocations
    then come in 2 MB pages (`THP_MEM_ALLOC_ENABLE`, torch's own switch, which it reads at its
    first allocation: a process that allocated before keeps 4 KB pages), and glibc's malloc
    keeps freed memory (up to 1 GiB, `mallopt`) instead of returning it to the system, so a
    step's activations reuse pages already faulted in. Decoding streams every weight once a
    token, and with 4 KB pages that stream walks a page table entry every 4 KB. The 124m
    preset, fp32, 2 threads (bench/RESULTS.md, issue 23): batch-1 generation 38.7 → 46.6 tok/s
    (medians; faster in 4 of 4 process pairs), `serve` at 32 clients 463 → 509.5 tok/s (5 of
    6 pairs), one client 40 → 44.5 (6 of 6); the huge pages without the kept memory made the
    engine's steps slower (5 of 6).

    Both settings are the process's and stay after the block; the environment variable is
    restored when the block ends, so processes started after it do not inherit it (`serve`
    holds the block until it stops). Nothing changes off glibc Linux or with
    `JIELONG_NO_HUGE_PAGES=1`."""
    libc = None
    if sys.platform == "linux" and not os.environ.get("JIELONG_NO_HUGE_PAGES"):
        libc = ctypes.CDLL(None)
        if not hasattr(libc, "gnu_get_libc_version"):  # musl and others: leave them be
            libc = None
    if libc is None:
        yield
        return
    libc.mallopt(M_MMAP_THRESHOLD, KEEP_BYTES)
    libc.mallopt(M_TRIM_THRESHOLD, KEEP_BYTES)
    before = os.environ.get("THP_MEM_ALLOC_ENABLE")
    os.environ["THP_MEM_ALLOC_ENABLE"] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ["THP_MEM_ALLOC_ENABLE"]
        else:
            os.environ["THP_MEM_ALLOC_ENABLE"] = before
