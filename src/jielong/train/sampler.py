"""The one epoch sampler every stage draws its batches from.

A batch is a function of (step, micro, rank) alone: example p of the run is element
p mod N of epoch p // N's permutation, and each epoch's permutation is seeded by (seed,
epoch). So a killed run resumes exactly, and across processes every example is seen once
per epoch. Position p is (step × grad_accum × world + micro × world + rank) × batch_size:
a function of the step and the global micro-batch index alone (`jielong.train.loop`), so
1 process with grad_accum 2 draws what 2 processes with grad_accum 1 do.
"""

from __future__ import annotations

import torch


class EpochSampler:
    """Example (or packed row) indices for (step, micro, rank): epoch after epoch, each a
    fresh shuffle of all `n` examples."""

    def __init__(self, n: int, batch_size: int, grad_accum: int, world: int, seed: int):
        self.n, self.batch_size, self.grad_accum, self.world, self.seed = n, batch_size, grad_accum, world, seed
        self._perm: tuple[int, list[int]] = (-1, [])  # (epoch, its permutation): the last one used

    def indices(self, step: int, micro: int, rank: int) -> list[int]:
        start = ((step * self.grad_accum + micro) * self.world + rank) * self.batch_size
        out = []
        for p in range(start, start + self.batch_size):
            epoch, i = divmod(p, self.n)
            if self._perm[0] != epoch:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                self._perm = (epoch, torch.randperm(self.n, generator=g).tolist())
            out.append(self._perm[1][i])
        return out

    def global_micro(self, micro: int, rank: int) -> int:
        """The step's micro-batch index across all processes (`jielong.train.loop`): what a
        stage's other draws (negatives, questions) are seeded with, beside the step."""
        return micro * self.world + rank

    def epochs(self, steps: int) -> float:
        """How many passes over the data `steps` optimizer steps make."""
        return steps * self.grad_accum * self.world * self.batch_size / max(1, self.n)
