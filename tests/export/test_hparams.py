"""Hyperparameters in the GGUF file: rope scaling (llama3, linear, yarn) and the context a
model with a sliding window may declare."""

from __future__ import annotations

import json

import numpy as np
import pytest
from gguf_helpers import (
    make_model,
    make_tokenizer,
    patch_config,
    read,
    values,
)

from jielong.cli import run
from jielong.errors import UserError
from jielong.export.gguf import export_gguf, gguf_cmd
from jielong.tokenizer import Tokenizer

gguf = pytest.importorskip("gguf")
T = gguf.GGMLQuantizationType


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return make_tokenizer()


def test_llama3_rope_scaling_writes_rope_freqs(tmp_path, tok):
    # transformers is the oracle here, a dev-only dependency
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    d = make_model(tmp_path / "m", tok)
    patch_config(d, rope_scaling=rope)
    meta, tensors = read(export_gguf(d, outtype="f16"))
    freqs = values(tensors["rope_freqs.weight"])
    assert tensors["rope_freqs.weight"].tensor_type == T.F32 and freqs.shape == (8,)

    # The oracle: transformers' own Llama 3.1 frequencies, as divisors of the plain ones.
    hf_cfg = LlamaConfig(hidden_size=64, num_attention_heads=4, max_position_embeddings=256,
                         rope_parameters={**rope, "rope_theta": 10000.0})
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_cfg, "cpu")
    plain = 10000.0 ** (-np.arange(0, 16, 2) / 16)
    np.testing.assert_allclose(freqs, plain / scaled.numpy(), rtol=1e-5)
    assert freqs[0] == 1.0 and freqs[-1] == 8.0 and 1.0 < freqs[1] < 8.0  # all three regimes
    assert "llama.rope.scaling.type" not in meta


def test_linear_and_yarn_rope_scaling(tmp_path, tok):
    d = make_model(tmp_path / "lin", tok)
    patch_config(d, rope_scaling={"type": "linear", "factor": 2.0})  # the old key
    meta, tensors = read(export_gguf(d))
    assert meta["llama.rope.scaling.type"] == "linear"
    assert meta["llama.rope.scaling.factor"] == 2.0
    assert "rope_freqs.weight" not in tensors

    d = make_model(tmp_path / "yarn", tok, model_type="qwen3", qk_norm=True)
    # transformers 5 layout: theta and scaling together in rope_parameters
    patch_config(d, rope_theta=None, rope_scaling=None, rope_parameters={
        "rope_type": "yarn", "rope_theta": 500000.0, "factor": 4.0,
        "original_max_position_embeddings": 64})
    meta, _ = read(export_gguf(d))
    assert meta["qwen3.rope.freq_base"] == 500000.0
    assert meta["qwen3.rope.scaling.type"] == "yarn"
    assert meta["qwen3.rope.scaling.factor"] == 4.0
    assert meta["qwen3.rope.scaling.original_context_length"] == 64


def test_unsupported_rope_type_is_a_user_error(tmp_path, tok):
    d = make_model(tmp_path / "m", tok)
    patch_config(d, rope_scaling={"rope_type": "longrope", "factor": 2.0})
    with pytest.raises(UserError, match="longrope"):
        export_gguf(d)


def test_sliding_window_is_refused_past_the_window(tmp_path, tok, capsys):
    """llama.cpp's llama/qwen2/qwen3 architectures read no sliding window and attend over the
    whole context: a windowed model exports only for contexts up to its window."""
    d = make_model(tmp_path / "m", tok, model_type="mistral", tie_word_embeddings=False,
                   sliding_window=16)
    with pytest.raises(UserError) as e:
        export_gguf(d, tmp_path / "full.gguf")
    msg = str(e.value)
    assert "\n" not in msg and str(d / "config.json") in msg
    assert "sliding_window=16 on 2 of 2 layers" in msg and "--context_length 16" in msg
    assert not (tmp_path / "full.gguf").exists()

    run(["export", "gguf", str(d), "--out", str(tmp_path / "o"), "--context_length", "16"],
        {"export": {"gguf": gguf_cmd}})
    path = tmp_path / "o" / "m-f16.gguf"
    meta, _ = read(path)
    assert meta["llama.context_length"] == 16
    assert "PARAMETER num_ctx 16" in (path.parent / "Modelfile").read_text()
    capsys.readouterr()

    # Only Qwen2's upper layer windowed (max_window_layers): refused the same way.
    q = make_model(tmp_path / "q", tok, model_type="qwen2", attention_bias=True,
                   sliding_window=16, layer_types=["full_attention", "sliding_attention"])
    assert json.loads((q / "config.json").read_text())["max_window_layers"] == 1
    with pytest.raises(UserError, match="sliding_window=16 on 1 of 2 layers.*qwen2"):
        export_gguf(q, tmp_path / "q.gguf")
    for bad in (0, 257):
        with pytest.raises(UserError, match=f"--context_length {bad}: give a whole number from "
                                            "1 to the model's context, 256"):
            export_gguf(q, tmp_path / "q.gguf", context_length=bad)
