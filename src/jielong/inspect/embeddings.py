"""Contextual embeddings: one word's hidden state in several sentences, layer by layer.

Run as:
    jielong inspect embeddings --help

For example, 蘋果 next to 手機 and next to 樹 (the notes' example):
    jielong inspect embeddings 蘋果 --sentences "我買了新的蘋果手機" "樹上的蘋果紅了" "蘋果很好吃" --model runs/demo/model --out runs/embeddings

At the embedding layer a word is one vector whatever surrounds it; each layer mixes in its
context, so the same word in a phone sentence and in a fruit sentence drifts apart (ELMo,
Peters et al. 2018, first showed such vectors separate word senses). The word's vector in a
sentence is the mean of the residual stream (jielong.inspect.lens.residual_stream, before
the final norm) over the tokens its characters fall in, found by character offsets (a token
that spans the word's edge counts too); its first occurrence is used. Printed: each layer's
cosine-similarity table between the sentences; written: cosine.json and, per chosen layer,
pca_layer{N}.png, the vectors projected on their two principal components (numpy's SVD of
the centred vectors).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from jielong.errors import UserError
from jielong.files import atomic_path, write_json
from jielong.hub import open_model
from jielong.inspect.lens import encode, residual_stream
from jielong.model import Transformer
from jielong.plots import font_family
from jielong.runtime import pick_device


def word_span(offsets: list[tuple[int, int]], start: int, end: int) -> list[int]:
    """Indices of the tokens whose characters overlap [start, end) (special tokens, at (0, 0),
    never do)."""
    return [i for i, (a, b) in enumerate(offsets) if a < end and b > start and b > a]


@torch.no_grad()
def word_vectors(model: Transformer, tok, word: str, sentences: list[str]) -> np.ndarray:
    """(layers + 1, sentences, hidden) float64: the word's mean hidden state at each layer in
    each sentence."""
    device = next(model.parameters()).device
    out = []
    for n, s in enumerate(sentences):
        at = s.find(word)
        if at < 0:
            raise UserError(f"sentence {n + 1} ({s!r}) does not contain {word!r}; "
                            "give sentences that each use the word")
        ids, offsets = encode(tok, s)
        span = word_span(offsets, at, at + len(word))
        h = residual_stream(model, torch.tensor([ids], device=device))[:, 0]  # (L+1, T, H)
        out.append(h[:, span].float().mean(1).cpu().numpy())
    return np.stack(out, 1).astype(np.float64)


def cosine_table(vectors: np.ndarray) -> np.ndarray:
    """(..., n, n) cosine similarities between the n vectors of the last two axes."""
    unit = vectors / np.linalg.norm(vectors, axis=-1, keepdims=True).clip(min=1e-12)
    return unit @ np.swapaxes(unit, -1, -2)


def pca_2d(vectors: np.ndarray) -> np.ndarray:
    """(n, 2): the rows projected on their first two principal components (zeros past the
    rank)."""
    centred = vectors - vectors.mean(0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    xy = u[:, :2] * s[:2]
    return np.pad(xy, ((0, 0), (0, 2 - xy.shape[1])))


def print_tables(tables: np.ndarray, sentences: list[str]) -> None:
    names = [f"S{n + 1}" for n in range(len(sentences))]
    for n, s in enumerate(sentences):
        print(f"S{n + 1}: {s}")
    for layer, t in enumerate(tables):
        print(f"\nlayer {layer}{' (embeddings)' if layer == 0 else ''}")
        print("     " + "".join(f"{m:>7}" for m in names))
        for name, row in zip(names, t, strict=True):
            print(f"{name:>4} " + "".join(f"{v:7.3f}" for v in row))


def plot_pca(xy: np.ndarray, sentences: list[str], word: str, layer: int, png: str | Path) -> Path:
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    warnings.filterwarnings("ignore", message="Glyph .* missing from font")  # no CJK font here

    family = font_family()
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=110)
    ax.scatter(xy[:, 0], xy[:, 1], c=[f"C{n % 10}" for n in range(len(xy))], s=50)
    for (x, y), s in zip(xy, sentences, strict=True):
        ax.annotate(s if len(s) <= 24 else s[:23] + "…", (x, y), xytext=(4, 4),
                    textcoords="offset points", fontsize=8, family=family)
    ax.set_title(f"「{word}」 at layer {layer}: 2-D PCA", family=family)
    ax.set(xlabel="PC 1", ylabel="PC 2")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(png)


def embeddings_cmd(word: str, sentences: list[str] | None = None, model: str = "runs/demo/model",
                   out: str = "runs/embeddings", layers: list[int] | None = None,
                   device: str = "auto", dtype: str = "auto") -> dict:
    """A word's hidden state in several sentences: cosine similarities and a 2-D PCA per layer.

    Args:
        word: The word to follow (e.g. 蘋果); each sentence must contain it.
        sentences: Two or more sentences that use the word in different senses.
        model: A model directory (jielong's or a Hugging Face one) or a hub id.
        out: Folder for cosine.json and the pca_layer{N}.png plots.
        layers: Layers to plot (0: the embeddings; default: the first and the last).
        device: auto, cpu, cuda, mps.
        dtype: auto (the checkpoint's on a GPU, float32 on CPU), float32, bfloat16, float16.
    """
    sentences = sentences or []
    if len(sentences) < 2:
        raise UserError("give two or more sentences with --sentences \"S1\" \"S2\" …")
    net, tok, _ = open_model(model, device=pick_device(device), dtype=dtype)
    vecs = word_vectors(net, tok, word, sentences)
    tables = cosine_table(vecs)
    print_tables(tables, sentences)
    last = len(tables) - 1
    chosen = layers if layers else [0, last]
    bad = [n for n in chosen if not 0 <= n <= last]
    if bad:
        raise UserError(f"--layers {bad[0]}: this model has layers 0 (embeddings) to {last}")
    Path(out).mkdir(parents=True, exist_ok=True)
    write_json(Path(out) / "cosine.json", {"word": word, "sentences": sentences,
                                           "cosine": np.round(tables, 4).tolist()})
    for n in dict.fromkeys(chosen):
        print(f"wrote {plot_pca(pca_2d(vecs[n]), sentences, word, n, Path(out) / f'pca_layer{n}.png')}")
    return {"cosine": tables, "vectors": vecs}
