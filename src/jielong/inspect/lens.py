"""The logit lens: what each layer would predict if it were the last.

Run as:
    jielong inspect lens --help

For example, on the model `jielong demo` trains:
    jielong inspect lens "從前有一個" --model runs/demo/model --out runs/lens

Each layer's residual stream (the embeddings, then every layer's output) goes through the
model's own final norm and LM head, as nostalgebraist's "interpreting GPT: the logit lens"
(LessWrong, 2020) does; the last layer's lens is the model's own output. Printed: the top
token and its probability per layer (rows) and position (columns: the token read there);
written: lens.json and lens.png, the grid coloured by probability. On a real multilingual
model the middle layers of a translation prompt often predict English words before the last
layers switch to the target language (Wendler et al. 2024, "Do Llamas work in English?").
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from jielong.files import atomic_path, write_json
from jielong.hub import open_model
from jielong.model import Transformer
from jielong.plots import font_family
from jielong.runtime import pick_device


@torch.no_grad()
def residual_stream(model: Transformer, input_ids: torch.Tensor) -> torch.Tensor:
    """(layers + 1, B, T, hidden): the embeddings, then each layer's output, before the
    final norm (transformers' `output_hidden_states` gives the same, the last one normed)."""
    states: list[torch.Tensor] = []
    model.hidden_states(input_ids, collect=states)
    return torch.stack(states)


@torch.no_grad()
def lens_logits(model: Transformer, input_ids: torch.Tensor) -> torch.Tensor:
    """(layers + 1, B, T, vocab): every layer's residual stream through the final norm and
    the LM head."""
    return model.lm_head(model.model.norm(residual_stream(model, input_ids)))


def piece(tok, token_id: int) -> str:
    """A token as text for a table; bytes that are only part of a UTF-8 character (byte-level
    BPE splits most Han characters) shown as <e8> etc. (a local stand-in for
    jielong.inspect.pieces)."""
    text = tok.token_bytes(token_id).decode("utf-8", errors="backslashreplace")
    return re.sub(r"\\x([0-9a-f]{2})", r"<\1>", text)


def encode(tok, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character offsets of `text`, with the tokenizer's own special tokens
    (Llama's <|begin_of_text|>), as transformers encodes by default."""
    enc = tok.backend.encode(text, add_special_tokens=True)
    return enc.ids, enc.offsets


def lens_table(model: Transformer, tok, prompt: str) -> dict:
    """{"tokens": [the token read at each position], "layers": [[(top token, prob) per
    position] per layer 0..L]}; layer 0 is the embeddings alone."""
    ids, _ = encode(tok, prompt)
    x = torch.tensor([ids], device=next(model.parameters()).device)
    probs = lens_logits(model, x)[:, 0].float().softmax(-1)
    top_p, top_i = probs.max(-1)
    return {"tokens": [piece(tok, i) for i in ids],
            "layers": [[(piece(tok, int(i)), round(float(p), 4)) for i, p in zip(ri, rp, strict=True)]
                       for ri, rp in zip(top_i, top_p, strict=True)]}


def print_table(table: dict) -> None:
    width = min(12, max(8, *(len(t) + 3 for t in table["tokens"])))
    print("layer " + "".join(f"{t!r:>{width}}"[-width:] for t in table["tokens"]))
    for n, row in enumerate(table["layers"]):
        print(f"{n:>5} " + "".join(f"{t + f' {p:.2f}':>{width}}"[-width:] for t, p in row))


def plot_grid(table: dict, png: str | Path, title: str = "logit lens") -> Path:
    """Layers (rows, the last at the top) × positions, each cell the top token, coloured by
    its probability."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    warnings.filterwarnings("ignore", message="Glyph .* missing from font")  # no CJK font here

    rows = table["layers"]
    T, L = len(table["tokens"]), len(rows)
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * T, 0.9 + 0.45 * L), dpi=110)
    probs = [[p for _, p in row] for row in rows]
    im = ax.imshow(probs, origin="lower", cmap="Blues", vmin=0, vmax=1, aspect="auto")
    family = font_family()
    for y, row in enumerate(rows):
        for x, (t, p) in enumerate(row):
            ax.text(x, y, t, ha="center", va="center", fontsize=8, family=family,
                    color="white" if p > 0.6 else "black")
    ax.set_xticks(range(T), table["tokens"], family=family, fontsize=8)
    ax.set_yticks(range(L), ["emb"] + [str(n) for n in range(1, L)])
    ax.set(xlabel="token read at this position", ylabel="layer", title=title)
    fig.colorbar(im, ax=ax, label="probability of the top token")
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(png)


def lens_cmd(prompt: str, model: str = "runs/demo/model", out: str = "runs/lens",
             device: str = "auto", dtype: str = "auto") -> dict:
    """The logit lens: each layer's top next token and its probability at each position.

    Args:
        prompt: The text to read (a sentence or a translation prompt).
        model: A model directory (jielong's or a Hugging Face one) or a hub id.
        out: Folder for lens.json and lens.png.
        device: auto, cpu, cuda, mps.
        dtype: auto (the checkpoint's on a GPU, float32 on CPU), float32, bfloat16, float16.
    """
    net, tok, _ = open_model(model, device=pick_device(device), dtype=dtype)
    table = lens_table(net, tok, prompt)
    Path(out).mkdir(parents=True, exist_ok=True)
    print_table(table)
    write_json(Path(out) / "lens.json", {"prompt": prompt, "model": str(model), **table})
    png = plot_grid(table, Path(out) / "lens.png", title=f"logit lens: {prompt[:40]}")
    print(f"wrote {png} and {Path(out) / 'lens.json'}")
    return table
