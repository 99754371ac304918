"""Which tensors go into the GGUF file: llama.cpp's names, the rotary row order, each type.

Norms and biases stay f32 (as llama.cpp's converter keeps them); matrices take the chosen
type, with q8_0 falling back to f16 for rows that are not a multiple of its 32-value blocks.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from jielong.errors import UserError
from jielong.export.hparams import Hparams, llama3_rope_factors

OUTTYPES = ("f32", "f16", "bf16", "q8_0")


# -- rotary layout -----------------------------------------------------------------------


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder the rows of a q_proj / k_proj weight (or bias) from Hugging Face's rotary
    layout to llama.cpp's "llama" one, within each head of d rows: HF pairs row i with row
    i + d/2, llama.cpp pairs rows 2i and 2i+1, so new row 2i = old row i and new row 2i+1 =
    old row i + d/2. Seen as (head, half, i): swap the half and i axes."""
    d = w.shape[0] // n_head
    return w.reshape(n_head, 2, d // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of `permute_qk`: llama.cpp's row order back to Hugging Face's."""
    d = w.shape[0] // n_head
    return w.reshape(n_head, d // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# -- tensors ------------------------------------------------------------------------------


@dataclass
class PlannedTensor:
    """One tensor of the GGUF file, planned: read only when `load` is called."""

    name: str  # llama.cpp's name
    shape: tuple[int, ...]  # numpy order: (rows, columns)
    qtype: object  # gguf.GGMLQuantizationType
    load: Callable[[], np.ndarray]  # float32 values in llama.cpp's layout


def _read(sf, key: str, heads: int | None) -> np.ndarray:
    x = sf.get_tensor(key).to(torch.float32).numpy()
    return permute_qk(x, heads) if heads else x


def _qtype(gguf, shape: tuple[int, ...], outtype: str):
    T = gguf.GGMLQuantizationType
    if len(shape) < 2 or outtype == "f32":
        return T.F32  # norms, biases, rope factors: tiny, and precision matters
    if outtype == "q8_0":
        block, _ = gguf.GGML_QUANT_SIZES[T.Q8_0]
        return T.Q8_0 if shape[-1] % block == 0 else T.F16
    return T.BF16 if outtype == "bf16" else T.F16


def _order(name: str) -> tuple:
    m = re.match(r"blk\.(\d+)\.", name)
    if m:
        return (1, int(m.group(1)), name)
    return (0 if name.startswith(("token_embd", "rope_freqs")) else 2, 0, name)


def plan_tensors(gguf, hp: Hparams, shards: list[tuple[Path, object]],
                 outtype: str) -> list[PlannedTensor]:
    """Every tensor to write, with its GGUF name, shape, type and a loader: checked
    against config.json before anything is written."""
    arch = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2,
            "qwen3": gguf.MODEL_ARCH.QWEN3}[hp.arch]
    names = gguf.get_tensor_name_map(arch, hp.num_layers)
    plan: dict[str, PlannedTensor] = {}
    for f, sf in shards:
        for key in sf.keys():
            if key.endswith("rotary_emb.inv_freq"):
                continue  # a buffer some old checkpoints kept; llama.cpp computes it
            if key == "lm_head.weight" and hp.tied:
                continue  # llama.cpp uses token_embd when there is no output.weight
            name = names.get_name(key, try_suffixes=(".weight", ".bias"))
            if name is None:
                raise UserError(f"{f}: tensor {key!r} has no counterpart in llama.cpp's "
                                f"{hp.arch} architecture; check model_type ({hp.model_type}) "
                                "in config.json")
            shape = tuple(sf.get_slice(key).get_shape())
            heads = None
            if hp.arch == "llama" and re.search(r"\.self_attn\.[qk]_proj\.", key):
                heads = hp.n_head if ".q_proj." in key else hp.n_kv_head
                if shape[0] != heads * hp.head_dim:
                    raise UserError(f"{f}: {key} has {shape[0]} rows, but config.json says "
                                    f"{heads} heads of head_dim {hp.head_dim}; the weights do "
                                    "not match config.json")
            if hp.arch != "llama" and name.endswith("attn_output.bias"):
                raise UserError(f"{f}: {key}: llama.cpp's {hp.arch} architecture has no bias on "
                                "the attention output projection, so this model cannot run there; "
                                "export a model trained without it (attention_bias false)")
            if name == "token_embd.weight" and shape[0] != hp.vocab_size:
                raise UserError(f"{f}: {key} has {shape[0]} rows but config.json's vocab_size "
                                f"is {hp.vocab_size}; the weights do not match config.json")
            plan[name] = PlannedTensor(name, shape, _qtype(gguf, shape, outtype),
                                       functools.partial(_read, sf, key, heads))

    def extra(name: str, values: np.ndarray) -> None:
        plan[name] = PlannedTensor(name, values.shape, gguf.GGMLQuantizationType.F32,
                                   lambda: values)

    rope = hp.rope_scaling or {}
    if rope.get("rope_type") == "llama3":
        extra("rope_freqs.weight", llama3_rope_factors(hp.model_config))
    if hp.arch == "qwen2":
        # llama.cpp's qwen2 graph requires the q/k/v biases; a Qwen2-shaped model trained
        # without them gets zeros, which is the same model.
        for b in range(hp.num_layers):
            for part, heads in (("q", hp.n_head), ("k", hp.n_kv_head), ("v", hp.n_kv_head)):
                if f"blk.{b}.attn_{part}.bias" not in plan:
                    extra(f"blk.{b}.attn_{part}.bias", np.zeros(heads * hp.head_dim, np.float32))

    required = ["token_embd.weight", "output_norm.weight"] + ([] if hp.tied else ["output.weight"])
    per_block = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm",
                 "ffn_gate", "ffn_up", "ffn_down"]
    if hp.arch == "qwen3":
        per_block += ["attn_q_norm", "attn_k_norm"]
    required += [f"blk.{b}.{p}.weight" for b in range(hp.num_layers) for p in per_block]
    missing = [n for n in required if n not in plan]
    if missing:
        hint = (" (lm_head.weight: set tie_word_embeddings to true in config.json if the model "
                "shares it with embed_tokens)" if missing == ["output.weight"] else "")
        raise UserError(f"{shards[0][0].parent}: the weights lack {len(missing)} tensor(s) a "
                        f"{hp.model_type} model with this config.json needs, e.g. llama.cpp's "
                        f"{missing[0]!r}{hint}")
    return sorted(plan.values(), key=lambda t: _order(t.name))


def encode(gguf, x: np.ndarray, qtype) -> np.ndarray:
    """float32 values in `qtype`'s encoding: an f32 or f16 array, or the quantised bytes."""
    T = gguf.GGMLQuantizationType
    x = np.ascontiguousarray(x, dtype=np.float32)
    if qtype == T.F32:
        return x
    if qtype == T.F16:
        return x.astype(np.float16)
    return gguf.quants.quantize(x, qtype)  # BF16, Q8_0: raw bytes, one row of blocks per row
