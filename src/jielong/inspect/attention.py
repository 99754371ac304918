"""Attention maps: for each layer and head, how much each token looks at each earlier one.

Run as:
    jielong inspect attention "小美把禮物送給小芳，她很開心。" --model runs/demo/model --out runs/attention --token 她

The weights are recomputed from our own model code, not a copy of it: a forward pre-hook on
each layer's attention reads the very inputs it gets (hidden states, RoPE cos/sin, the mask
or the causal flag, so sliding windows are honoured) and forms softmax(q·kᵀ/√d) with the
layer's own projections, QK-norm and RoPE, as `scaled_dot_product_attention` computes it
inside. The normal forward path is untouched (no hooks are left behind). Tests check the
weights equal transformers' `output_attentions=True` for Llama and Qwen2.

Tokens are merged into whole characters (jielong.inspect.pieces): a key piece sums its
tokens' weights, a query piece averages its tokens' rows, so every row still sums to 1.
Rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers") follows the
attention through the layers: each layer's head-mean plus the identity for the residual
connection, rows renormalised, multiplied from the first layer up.

Writes layer<L>.png (every head of a layer; or one head with --layer/--head), rollout.png and
attention.json (the merged weights and the summary of where --token looks).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from jielong.errors import UserError
from jielong.files import atomic_path, write_json
from jielong.hub import open_model
from jielong.inspect.pieces import merge_matrix, merged_pieces
from jielong.model import Transformer, apply_rope
from jielong.plots import font_family

_TOP = 3  # pieces listed in the summary


def layer_weights(attn, x, cos, sin, mask, causal) -> torch.Tensor:
    """(B, heads, T, keys) attention probabilities of one `jielong.model.Attention` on its
    inputs, as SDPA forms them (scale 1/√head_dim). Without a cache only."""
    B, T, _ = x.shape
    q = attn.q_proj(x).view(B, T, attn.n_head, attn.head_dim)
    k = attn.k_proj(x).view(B, T, attn.n_kv, attn.head_dim)
    if hasattr(attn, "q_norm"):
        q, k = attn.q_norm(q), attn.k_norm(k)
    q = apply_rope(q.transpose(1, 2), cos, sin)
    k = apply_rope(k.transpose(1, 2), cos, sin)
    k = k.repeat_interleave(attn.n_head // attn.n_kv, dim=1)
    scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(attn.head_dim)
    S = k.shape[2]
    if mask is None and causal:
        mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(S - T)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1)


def attention_weights(model: Transformer, ids: list[int]) -> torch.Tensor:
    """(layers, heads, T, T) float32 attention probabilities of `model` on one sequence."""
    found: list[torch.Tensor] = []

    def grab(module, args):
        found.append(layer_weights(module, *args[:3], *args[4:6]))

    hooks = [layer.self_attn.register_forward_pre_hook(grab) for layer in model.model.layers]
    try:
        with torch.inference_mode():
            model(torch.tensor([ids], device=model.lm_head.weight.device), last_only=True)
    finally:
        for h in hooks:
            h.remove()
    return torch.stack([w[0] for w in found]).float().cpu()


def rollout(weights: torch.Tensor) -> torch.Tensor:
    """(T, T) attention rollout over (layers, heads, T, T): what each token draws on from
    each input token through all the layers, the residual stream counted as half."""
    T = weights.shape[-1]
    out = torch.eye(T)
    for a in weights.mean(1):
        a = 0.5 * a + 0.5 * torch.eye(T)
        out = (a / a.sum(-1, keepdim=True)) @ out
    return out


def summary(merged: torch.Tensor, rolled: torch.Tensor, texts: list[str], token: str | None) -> dict:
    """Where the piece `token` (the last one holding it; default the last piece) looks most:
    per layer (head mean) and after rollout, its top pieces with weights."""
    at = len(texts) - 1
    if token:
        hits = [i for i, t in enumerate(texts) if token in t]
        if not hits:
            raise UserError(f"--token {token!r} is not in the sentence; its pieces are {' | '.join(texts)}")
        at = hits[-1]

    def top(row: torch.Tensor) -> list[tuple[str, float]]:
        w, i = row[: at + 1].topk(min(_TOP, at + 1))
        return [(f"{texts[j]}@{j}", round(float(v), 4)) for v, j in zip(w, i.tolist(), strict=True)]

    return {"token": texts[at], "position": at,
            "layers": [top(layer.mean(0)[at]) for layer in merged], "rollout": top(rolled[at])}


def heatmaps(merged: torch.Tensor, rolled: torch.Tensor, texts: list[str], out: Path,
             layer: int | None, head: int | None) -> list[Path]:
    """PNG heatmaps: one per layer (a grid of its heads, or one head), and the rollout."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["font.family"] = font_family()
    labels = [t.replace("\n", "↵") for t in texts]
    L, H = merged.shape[:2]
    layers = [layer] if layer is not None else range(L)
    heads = [head] if head is not None else list(range(H))
    files = []

    def draw(ax, m, title):
        ax.imshow(m.numpy(), cmap="viridis", vmin=0, vmax=1)
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set_title(title, fontsize=9)

    side = max(3.0, 0.25 * len(labels))
    for li in layers:
        cols = min(4, len(heads))
        rows = math.ceil(len(heads) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(side * cols, side * rows), dpi=100, squeeze=False)
        for ax in axes.flat[len(heads):]:
            ax.axis("off")
        for ax, h in zip(axes.flat, heads, strict=False):
            draw(ax, merged[li, h], f"layer {li} head {h}")
        fig.tight_layout()
        files.append(_save(fig, out / (f"layer{li}.png" if head is None else f"layer{li}_head{head}.png")))
    fig, ax = plt.subplots(figsize=(side + 1, side + 1), dpi=100)
    draw(ax, rolled, "attention rollout, all layers")
    fig.tight_layout()
    files.append(_save(fig, out / "rollout.png"))
    return files


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def attention_cmd(sentence: str, model: str = "runs/demo/model", out: str = "runs/attention",
                  layer: int | None = None, head: int | None = None, token: str | None = None) -> dict:
    """Draw a model's attention per layer and head for a sentence, merged into whole characters.

    Args:
        sentence: The text to look at, e.g. 小美把禮物送給小芳，她很開心。
        model: A model folder or hub id.
        out: Folder for the PNG heatmaps and attention.json.
        layer: Draw only this layer (0-based; default every layer).
        head: Draw only this head (0-based; default every head).
        token: Summarise where this character or word looks (default: the last piece).
    """
    m, tok, _ = open_model(model)
    L, H = m.config.num_hidden_layers, m.config.num_attention_heads
    if layer is not None and not 0 <= layer < L:
        raise UserError(f"--layer {layer}: this model has layers 0..{L - 1}")
    if head is not None and not 0 <= head < H:
        raise UserError(f"--head {head}: this model has heads 0..{H - 1}")
    ids = tok.encode(sentence)
    if not ids:
        raise UserError("the sentence is empty; give a text, e.g. \"小美把禮物送給小芳，她很開心。\"")
    pieces = merged_pieces(tok, ids)
    texts, spans = [t for t, _ in pieces], [s for _, s in pieces]
    weights = attention_weights(m, ids)
    merged, rolled = merge_matrix(weights, spans), merge_matrix(rollout(weights), spans)
    result = {"sentence": sentence, "pieces": texts, "summary": summary(merged, rolled, texts, token)}
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = heatmaps(merged, rolled, texts, out_dir, layer, head)
    write_json(out_dir / "attention.json", {**result, "weights": merged.tolist(), "rollout": rolled.tolist()})
    s = result["summary"]
    print(f"pieces: {' | '.join(texts)}")
    print(f"where 「{s['token']}」 (piece {s['position']}) looks most:")
    for li, row in enumerate(s["layers"]):
        print(f"  layer {li:>2}: " + "  ".join(f"{t} {w:.2f}" for t, w in row))
    print("  rollout : " + "  ".join(f"{t} {w:.2f}" for t, w in s["rollout"]))
    print(f"wrote {len(files)} pictures and attention.json to {out_dir}")
    return {**result, "files": [str(f) for f in files]}
