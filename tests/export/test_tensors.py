"""Tensors in the GGUF file: the rotary row order, zero biases for Qwen2, q8_0's fallback,
weights that do not match config.json."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf_helpers import (
    make_model,
    make_tokenizer,
    patch_config,
    read,
    values,
)
from safetensors.torch import load_file

from jielong.config import preset
from jielong.errors import UserError
from jielong.export.gguf import export_gguf
from jielong.export.tensors import permute_qk, unpermute_qk
from jielong.model import apply_rope
from jielong.tokenizer import Tokenizer

gguf = pytest.importorskip("gguf")
T = gguf.GGMLQuantizationType


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return make_tokenizer()


def test_permutation_is_invertible():
    rng = np.random.default_rng(0)
    for n_head, d in ((4, 16), (2, 8), (8, 64)):
        w = rng.standard_normal((n_head * d, 24)).astype(np.float32)
        p = permute_qk(w, n_head)
        assert not np.array_equal(p, w)
        np.testing.assert_array_equal(unpermute_qk(p, n_head), w)
        bias = rng.standard_normal(n_head * d)
        np.testing.assert_array_equal(unpermute_qk(permute_qk(bias, n_head), n_head), bias)
    # Row order within one head of 8: llama.cpp's pair (2i, 2i+1) is HF's (i, i+4).
    rows = np.arange(8)[:, None]
    assert permute_qk(rows, 1)[:, 0].tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


def _rope_interleaved(x: np.ndarray, pos: int, theta: float) -> np.ndarray:
    """llama.cpp's "normal" rope: rotate (x[2i], x[2i+1]) by pos * theta^(-2i/d)."""
    d = x.shape[-1]
    angle = pos * theta ** (-np.arange(0, d, 2) / d)
    cos, sin = np.cos(angle), np.sin(angle)
    out = np.empty_like(x)
    out[..., 0::2] = x[..., 0::2] * cos - x[..., 1::2] * sin
    out[..., 1::2] = x[..., 0::2] * sin + x[..., 1::2] * cos
    return out


def test_permuted_weights_give_the_same_rotary_queries():
    """jielong's rope (HF half layout) on W x, reordered, equals llama.cpp's interleaved rope
    on (permuted W) x; and attention scores q·k are the same."""
    cfg = preset("test")
    n_head, d, theta = cfg.num_attention_heads, cfg.head_dim, cfg.rope_theta
    # HF's half layout: dimension i and i + d/2 turn at the same frequency theta^(-2i/d)
    angles = np.outer(np.arange(128), theta ** (-np.arange(0, d, 2) / d))
    cos = torch.tensor(np.cos(np.concatenate([angles, angles], -1)))
    sin = torch.tensor(np.sin(np.concatenate([angles, angles], -1)))
    rng = np.random.default_rng(1)
    wq = rng.standard_normal((n_head * d, cfg.hidden_size))
    wk = rng.standard_normal((n_head * d, cfg.hidden_size))
    x = rng.standard_normal(cfg.hidden_size)

    def hf(w, pos):  # jielong's rotation of W x
        q = torch.tensor((w @ x).reshape(n_head, d), dtype=torch.float64)
        return apply_rope(q, cos[pos], sin[pos]).numpy()

    def cpp(w, pos):  # llama.cpp's rotation of (permuted W) x
        return _rope_interleaved((permute_qk(w, n_head) @ x).reshape(n_head, d), pos, theta)

    for pos in (0, 1, 7, 100):
        np.testing.assert_allclose(cpp(wq, pos).reshape(-1),
                                   permute_qk(hf(wq, pos).reshape(-1), n_head), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose((cpp(wq, pos) * cpp(wk, pos)).sum(-1),
                                   (hf(wq, pos) * hf(wk, pos)).sum(-1), rtol=1e-5, atol=1e-5)


def test_qwen2_without_bias_gets_zero_biases(tmp_path, tok):
    d = make_model(tmp_path / "m", tok, model_type="llama", attention_bias=False)
    patch_config(d, model_type="qwen2")  # a Qwen2-shaped model trained without q/k/v biases
    _, tensors = read(export_gguf(d))
    for b in range(2):
        for p, n in (("q", 64), ("k", 32), ("v", 32)):
            t = tensors[f"blk.{b}.attn_{p}.bias"]
            assert t.tensor_type == T.F32 and list(t.shape) == [n]
            assert not values(t).any()


def test_q8_0_falls_back_to_f16_for_odd_rows(tmp_path, tok):
    d = make_model(tmp_path / "m", tok, intermediate_size=200)  # down_proj rows of 200
    _, tensors = read(export_gguf(d, outtype="q8_0"))
    assert tensors["blk.0.ffn_down.weight"].tensor_type == T.F16
    assert tensors["blk.0.ffn_up.weight"].tensor_type == T.Q8_0
    original = load_file(d / "model.safetensors")["model.layers.0.mlp.down_proj.weight"].numpy()
    np.testing.assert_allclose(values(tensors["blk.0.ffn_down.weight"]), original, rtol=1e-3,
                               atol=1e-7)


def test_weights_not_matching_config(tmp_path, tok):
    d = make_model(tmp_path / "m", tok, tie_word_embeddings=True)
    patch_config(d, tie_word_embeddings=False)  # but there is no lm_head.weight
    with pytest.raises(UserError, match="output.weight.*tie_word_embeddings"):
        export_gguf(d)
    patch_config(d, tie_word_embeddings=True, num_attention_heads=8, head_dim=16)
    with pytest.raises(UserError, match="q_proj.weight has 64 rows"):
        export_gguf(d)


def test_qwen3_output_bias_is_refused(tmp_path, tok):
    d = make_model(tmp_path / "m", tok, model_type="qwen3", attention_bias=True)
    with pytest.raises(UserError, match="o_proj.bias.*no bias on the attention output"):
        export_gguf(d)
