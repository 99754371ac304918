"""Losses shared by the training stages.

`linear_cross_entropy(hidden, weight, targets)` is the next-token loss fused with the output
projection: it walks the tokens in chunks, computes each chunk's logits, loss and both
gradients at once (the gradient of softmax cross-entropy is just softmax − one-hot), and
never holds the full (tokens × vocab) logits. On a CPU this skips log-softmax's backward
and the zero-filled gradient buffers that dominate a small model's step; on a GPU it saves
the logits' memory, which for a 150k vocabulary is most of the activation memory.
"""

from __future__ import annotations

import torch

from jielong.data.chat import IGNORE


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk: int):
        keep = targets != IGNORE
        if not bool(keep.all()):  # ignored positions get no loss and no gradient: drop them
            hidden, targets = hidden[keep], targets[keep]
        n = max(1, targets.numel())
        need_grad, need_w = any(ctx.needs_input_grad[:2]), ctx.needs_input_grad[1]
        w = weight.to(hidden.dtype)
        grad_h = torch.empty_like(hidden) if need_grad else None
        # A frozen head (LoRA) needs no weight gradient: skip its vocab × hidden buffer.
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for i in range(0, hidden.shape[0], chunk):
            h, t = hidden[i:i + chunk], targets[i:i + chunk]
            logp = (h @ w.T).float().log_softmax(-1)
            total -= logp.gather(1, t[:, None]).sum()
            if need_grad:
                p = logp.exp_()  # softmax; minus one-hot is the gradient of the summed loss
                p[torch.arange(len(t), device=t.device), t] -= 1.0
                p = p.to(h.dtype)
                grad_h[i:i + chunk] = p @ w
                if need_w:
                    grad_w.addmm_(p.T.float(), h.float())
        if need_grad:
            if not bool(keep.all()):
                full = torch.zeros(keep.shape + grad_h.shape[1:], dtype=grad_h.dtype, device=grad_h.device)
                full[keep] = grad_h
                grad_h = full
            ctx.save_for_backward(grad_h / n, (grad_w / n).to(weight.dtype) if need_w else None)
        return total / n

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_out, grad_w * grad_out if grad_w is not None else None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk: int = 1024) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T` against `targets` (IGNORE = -100 skipped).

    hidden: (..., H); weight: (V, H); targets: (...). Equals
    F.cross_entropy((hidden @ weight.T).float().flatten(0, -2), targets.flatten()).
    """
    h = hidden.reshape(-1, hidden.shape[-1])
    return _LinearCrossEntropy.apply(h, weight, targets.reshape(-1), chunk)
