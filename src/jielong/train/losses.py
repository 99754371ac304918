"""Losses shared by the training stages, each chunked over the tokens so that the
(tokens × vocabulary) logits never exist at once.

`linear_cross_entropy(hidden, weight, targets)` is the next-token loss fused with the output
projection: it walks the tokens in chunks, computes each chunk's logits, loss and both
gradients at once (the gradient of softmax cross-entropy is just softmax − one-hot), and
never holds the full (tokens × vocab) logits. On a CPU this skips log-softmax's backward
and the zero-filled gradient buffers that dominate a small model's step; on a GPU it saves
the logits' memory, which for a 150k vocabulary is most of the activation memory.

`token_logps(hidden, weight, targets)` is the log-probability of each target token, the
quantity preference tuning (DPO, KTO: summed over a reply) and RL (per reply token, at the
sampling temperature) are made of. Its gradient is formed chunk by chunk the same way.
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


def _logits(h: torch.Tensor, w: torch.Tensor, temperature: float) -> torch.Tensor:
    logits = (h @ w.T).float()
    return logits if temperature == 1.0 else logits / temperature


class _TokenLogProbs(torch.autograd.Function):
    """log softmax(hidden @ weight.T / T)[target] per row, chunk by chunk, never holding the
    (rows × vocab) probabilities for the backward pass. d logp/d h = (w[t] − p·W) / T is (rows
    × hidden), so it is formed in the forward pass and kept; the head's own gradient
    Σ g·(onehot − p)ᵀh / T needs p again, so a trained head recomputes it chunk by chunk."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature: float, chunk: int, grad: bool):
        w = weight.to(hidden.dtype)
        need_h, need_w = grad and ctx.needs_input_grad[0], grad and ctx.needs_input_grad[1]
        out = torch.empty(len(targets), dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(out)
        d_hidden = torch.empty_like(hidden) if need_h else None
        for i in range(0, len(targets), chunk):
            h, t = hidden[i:i + chunk], targets[i:i + chunk]
            logits = _logits(h, w, temperature)
            lse[i:i + chunk] = logits.logsumexp(-1)
            out[i:i + chunk] = logits.gather(1, t[:, None])[:, 0] - lse[i:i + chunk]
            if need_h:
                p = (logits - lse[i:i + chunk, None]).exp_().to(h.dtype)
                d = w[t] - p @ w
                d_hidden[i:i + chunk] = d if temperature == 1.0 else d / temperature
        ctx.chunk, ctx.need_w, ctx.temperature = chunk, need_w, temperature
        ctx.save_for_backward(d_hidden, hidden if need_w else None, weight if need_w else None,
                              targets, lse)
        return out

    @staticmethod
    def backward(ctx, g):
        d_hidden, hidden, weight, targets, lse = ctx.saved_tensors
        grad_h = (d_hidden * g[:, None].to(d_hidden.dtype)) if d_hidden is not None else None
        grad_w = None
        if ctx.need_w:
            w, T = weight.to(hidden.dtype), ctx.temperature
            gh = hidden.float() * (g if T == 1.0 else g / T)[:, None]
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            grad_w.index_add_(0, targets, gh)
            for i in range(0, len(targets), ctx.chunk):
                p = (_logits(hidden[i:i + ctx.chunk], w, T) - lse[i:i + ctx.chunk, None]).exp_()
                grad_w -= p.T @ gh[i:i + ctx.chunk]
            grad_w = grad_w.to(weight.dtype)
        return grad_h, grad_w, None, None, None, None


def token_logps(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                temperature: float = 1.0, chunk: int = 1024) -> torch.Tensor:
    """(N,) float32 log-probabilities of `targets` (N,) under softmax(hidden @ weight.T /
    temperature); hidden: (N, H), weight: (V, H). Without grad mode (a reference or sampling
    pass) no gradient is formed."""
    return _TokenLogProbs.apply(hidden, weight, targets, temperature, chunk, torch.is_grad_enabled())
