"""`jielong export gguf`: tensors, metadata, tokenizer and Modelfile, read back with gguf's reader."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tokenizers
import torch
from safetensors.torch import load_file
from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors, trainers

from jielong.checkpoint import save_model
from jielong.config import preset
from jielong.errors import UserError
from jielong.export import (
    chat_format,
    export_gguf,
    gguf_cmd,
    permute_qk,
    unpermute_qk,
)
from jielong.model import Transformer, apply_rope
from jielong.tokenizer import CHAT_TEMPLATE, Tokenizer, train_tokenizer

gguf = pytest.importorskip("gguf")
T = gguf.GGMLQuantizationType

TEXTS = [
    "The weather is nice today, so we walk in the park.",
    "Language models keep choosing the next token.",
    "今天天氣很好，我們去公園散步。",
    "今天天气很好，我们去公园散步。",
    "接龍就是一個接一個地選下一個字。",
] * 10

FAMILIES = {  # name: preset overrides
    "llama": dict(model_type="llama", tie_word_embeddings=False),
    "llama-tied": dict(model_type="llama", tie_word_embeddings=True),
    "llama-bias": dict(model_type="llama", tie_word_embeddings=True, attention_bias=True),
    "qwen2": dict(model_type="qwen2", tie_word_embeddings=True, attention_bias=True),
    "qwen3": dict(model_type="qwen3", tie_word_embeddings=False, qk_norm=True),
    "mistral": dict(model_type="mistral", tie_word_embeddings=False),
}
ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}
FILE_TYPE = {"f32": 0, "f16": 1, "q8_0": 7, "bf16": 32}
MATRIX_TYPE = {"f32": T.F32, "f16": T.F16, "bf16": T.BF16, "q8_0": T.Q8_0}


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return train_tokenizer(TEXTS, vocab_size=300)


def _fresh(tok: Tokenizer) -> Tokenizer:
    """A copy that a test may change."""
    return Tokenizer(tokenizers.Tokenizer.from_str(tok.backend.to_str()), json.loads(json.dumps(tok.config)))


def make_model(d: Path, tok: Tokenizer | None, seed: int = 0, generation: dict | None = None,
               **overrides) -> Path:
    torch.manual_seed(seed)
    vocab = tok.vocab_size if tok is not None else 300
    cfg = preset("test", **{"vocab_size": vocab, **overrides})
    model = Transformer(cfg)
    with torch.no_grad():  # norms start at 1 and biases at 0: make them worth checking
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    save_model(d, model, tok, generation=generation)
    return d


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory, tok) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {name: make_model(root / name, tok, seed=i, **kw)
            for i, (name, kw) in enumerate(FAMILIES.items())}


def read(path: Path) -> tuple[dict, dict]:
    r = gguf.GGUFReader(str(path))
    return {k: f.contents() for k, f in r.fields.items()}, {t.name: t for t in r.tensors}


def values(t) -> np.ndarray:
    """A tensor's values as float32 in numpy (rows, columns) order."""
    if t.tensor_type in (T.F32, T.F16):
        return np.asarray(t.data, dtype=np.float32)
    return gguf.quants.dequantize(t.data, t.tensor_type)


def hf_to_gguf(n_layers: int, tied: bool, bias: bool, qk_norm: bool,
               out_bias: bool = False) -> dict[str, str]:
    """The names llama.cpp gives Hugging Face's tensors (written out by hand)."""
    names = {"model.embed_tokens.weight": "token_embd.weight",
             "model.norm.weight": "output_norm.weight"}
    if not tied:
        names["lm_head.weight"] = "output.weight"
    for b in range(n_layers):
        hf, g = f"model.layers.{b}.", f"blk.{b}."
        names |= {
            hf + "input_layernorm.weight": g + "attn_norm.weight",
            hf + "post_attention_layernorm.weight": g + "ffn_norm.weight",
            hf + "self_attn.q_proj.weight": g + "attn_q.weight",
            hf + "self_attn.k_proj.weight": g + "attn_k.weight",
            hf + "self_attn.v_proj.weight": g + "attn_v.weight",
            hf + "self_attn.o_proj.weight": g + "attn_output.weight",
            hf + "mlp.gate_proj.weight": g + "ffn_gate.weight",
            hf + "mlp.up_proj.weight": g + "ffn_up.weight",
            hf + "mlp.down_proj.weight": g + "ffn_down.weight",
        }
        if bias:
            for p in "qkv":
                names[hf + f"self_attn.{p}_proj.bias"] = g + f"attn_{p}.bias"
            if out_bias:  # Llama and Qwen3 with attention_bias; Qwen2 has none on o_proj
                names[hf + "self_attn.o_proj.bias"] = g + "attn_output.bias"
        if qk_norm:
            names[hf + "self_attn.q_norm.weight"] = g + "attn_q_norm.weight"
            names[hf + "self_attn.k_norm.weight"] = g + "attn_k_norm.weight"
    return names


# -- every family, every type ----------------------------------------------------------------


@pytest.mark.parametrize("outtype", ["f32", "f16", "bf16", "q8_0"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_export_family(family, outtype, family_dirs, tok, tmp_path, capsys):
    d = family_dirs[family]
    kw = FAMILIES[family]
    out = export_gguf(d, tmp_path, outtype)
    assert out == tmp_path / f"{family}-{outtype}.gguf"
    summary = capsys.readouterr().out.strip().splitlines()
    assert len(summary) == 1 and str(out) in summary[0] and outtype in summary[0]
    meta, tensors = read(out)

    arch = ARCH[kw["model_type"]]
    assert meta["general.architecture"] == arch
    assert meta["general.name"] == family
    assert meta["general.file_type"] == FILE_TYPE[outtype]
    expect = {"context_length": 256, "embedding_length": 64, "block_count": 2,
              "feed_forward_length": 192, "attention.head_count": 4,
              "attention.head_count_kv": 2, "attention.key_length": 16,
              "attention.value_length": 16, "rope.dimension_count": 16,
              "vocab_size": tok.vocab_size}
    for key, v in expect.items():
        assert meta[f"{arch}.{key}"] == v, key
    assert meta[f"{arch}.rope.freq_base"] == 10000.0
    assert meta[f"{arch}.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)

    assert meta["tokenizer.ggml.model"] == "gpt2"
    assert meta["tokenizer.ggml.pre"] == "qwen2"  # the nearest to jielong's pattern
    assert len(meta["tokenizer.ggml.tokens"]) == tok.vocab_size
    assert meta["tokenizer.ggml.tokens"][:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert meta["tokenizer.chat_template"] == CHAT_TEMPLATE

    original = load_file(d / "model.safetensors")
    names = hf_to_gguf(2, kw["tie_word_embeddings"], kw.get("attention_bias", False),
                       kw.get("qk_norm", False), out_bias=kw["model_type"] != "qwen2")
    assert set(original) == set(names)
    assert set(tensors) == set(names.values())
    assert meta["GGUF.tensor_count"] == len(names)
    for hf, name in names.items():
        t, x = tensors[name], original[hf].numpy()
        assert list(t.shape) == list(reversed(x.shape)), name  # GGUF lists dims innermost first
        assert t.tensor_type == (T.F32 if x.ndim == 1 else MATRIX_TYPE[outtype]), name
        got = values(t)
        assert got.shape == x.shape, name
        if arch == "llama" and (".q_proj." in hf or ".k_proj." in hf):
            heads = 4 if ".q_proj." in hf else 2
            assert not np.array_equal(got, x), "llama q/k rows should be reordered"
            got = unpermute_qk(got, heads)
        if t.tensor_type == T.F32:
            np.testing.assert_array_equal(got, x, err_msg=name)
        elif t.tensor_type == T.F16:
            np.testing.assert_allclose(got, x, rtol=1e-3, atol=1e-7, err_msg=name)
        elif t.tensor_type == T.BF16:
            np.testing.assert_allclose(got, x, rtol=8e-3, atol=1e-30, err_msg=name)
        else:  # Q8_0: each value within one quantisation step of its block
            step = np.abs(x).max() / 127
            assert np.abs(got - x).max() <= step, name


# -- rotary layout -----------------------------------------------------------------------------


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


# -- rope scaling --------------------------------------------------------------------------------


def _patch_config(d: Path, **changes) -> None:
    cfg = json.loads((d / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (d / "config.json").write_text(json.dumps(cfg))


def test_llama3_rope_scaling_writes_rope_freqs(tmp_path, tok):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    d = make_model(tmp_path / "m", tok)
    _patch_config(d, rope_scaling=rope)
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
    _patch_config(d, rope_scaling={"type": "linear", "factor": 2.0})  # the old key
    meta, tensors = read(export_gguf(d))
    assert meta["llama.rope.scaling.type"] == "linear"
    assert meta["llama.rope.scaling.factor"] == 2.0
    assert "rope_freqs.weight" not in tensors

    d = make_model(tmp_path / "yarn", tok, model_type="qwen3", qk_norm=True)
    # transformers 5 layout: theta and scaling together in rope_parameters
    _patch_config(d, rope_theta=None, rope_scaling=None, rope_parameters={
        "rope_type": "yarn", "rope_theta": 500000.0, "factor": 4.0,
        "original_max_position_embeddings": 64})
    meta, _ = read(export_gguf(d))
    assert meta["qwen3.rope.freq_base"] == 500000.0
    assert meta["qwen3.rope.scaling.type"] == "yarn"
    assert meta["qwen3.rope.scaling.factor"] == 4.0
    assert meta["qwen3.rope.scaling.original_context_length"] == 64


def test_unsupported_rope_type_is_a_user_error(tmp_path, tok):
    d = make_model(tmp_path / "m", tok)
    _patch_config(d, rope_scaling={"rope_type": "longrope", "factor": 2.0})
    with pytest.raises(UserError, match="longrope"):
        export_gguf(d)


# -- other model shapes ------------------------------------------------------------------------


def test_qwen2_without_bias_gets_zero_biases(tmp_path, tok):
    d = make_model(tmp_path / "m", tok, model_type="llama", attention_bias=False)
    _patch_config(d, model_type="qwen2")  # a Qwen2-shaped model trained without q/k/v biases
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


def test_sharded_weights(tmp_path, tok):
    torch.manual_seed(0)
    model = Transformer(preset("test", vocab_size=tok.vocab_size, tie_word_embeddings=False))
    save_model(tmp_path / "one", model, tok)
    save_model(tmp_path / "many", model, tok, max_shard_bytes=40_000)
    assert (tmp_path / "many" / "model.safetensors.index.json").exists()
    _, one = read(export_gguf(tmp_path / "one", outtype="f32"))
    _, many = read(export_gguf(tmp_path / "many", outtype="f32"))
    assert set(one) == set(many)
    for name in one:
        np.testing.assert_array_equal(values(one[name]), values(many[name]))


# -- tokenizers ------------------------------------------------------------------------------------


def _sentencepiece_style(texts: list[str]) -> tokenizers.Tokenizer:
    """A Llama-2/Mistral-like tokenizer.json: BPE on ▁-marked words with byte fallback."""
    specials = ["<unk>", "<s>", "</s>"]
    trained = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
    trained.pre_tokenizer = pre_tokenizers.Metaspace()
    trained.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, show_progress=False))
    learned = json.loads(trained.to_str())["model"]
    by_id = sorted(learned["vocab"].items(), key=lambda kv: kv[1])
    pieces = specials + [f"<0x{b:02X}>" for b in range(256)] + \
        [t for t, _ in by_id if t not in specials]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learned["merges"]]
    backend = tokenizers.Tokenizer(models.BPE(
        vocab={t: i for i, t in enumerate(pieces)}, merges=merges, unk_token="<unk>",
        byte_fallback=True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Sequence([decoders.Metaspace(), decoders.ByteFallback(),
                                         decoders.Fuse()])
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return backend


MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}"
    "{{ '[INST] ' + m['content'] + '[/INST]' }}{% else %}{{ ' ' + m['content'] + eos_token }}"
    "{% endif %}{% endfor %}")


def test_sentencepiece_style_tokenizer(tmp_path):
    backend = _sentencepiece_style(TEXTS)
    config = {"tokenizer_class": "LlamaTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
              "unk_token": "<unk>", "chat_template": MISTRAL_TEMPLATE}
    tok = Tokenizer(backend, config)
    assert tok.encode("\n")[-1] == 3 + 0x0A  # byte fallback: "\n" is <0x0A>
    d = make_model(tmp_path / "mistral", tok, model_type="mistral", bos_token_id=1,
                   eos_token_id=2, pad_token_id=None)
    out = export_gguf(d)
    meta, _ = read(out)
    assert meta["general.architecture"] == "llama"
    assert meta["tokenizer.ggml.model"] == "llama"
    assert "tokenizer.ggml.pre" not in meta and "tokenizer.ggml.merges" not in meta
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    assert len(tokens) == tok.vocab_size == len(meta["tokenizer.ggml.scores"])
    assert types[:3] == [2, 3, 3]  # <unk> unknown, <s> and </s> control
    assert tokens[3 + 0x0A] == "<0x0A>"
    assert [types[tokens.index(f"<0x{b:02X}>")] for b in range(256)] == [6] * 256
    assert set(types[259:]) == {1}
    # Scores follow merge order: a token made by an earlier merge scores higher.
    learned = json.loads(backend.to_str())["model"]["merges"]
    first, later = ("".join(m) if isinstance(m, list) else m.replace(" ", "")
                    for m in (learned[0], learned[-1]))
    scores = meta["tokenizer.ggml.scores"]
    assert scores[tokens.index(first)] > scores[tokens.index(later)]
    assert meta["tokenizer.ggml.bos_token_id"] == 1
    assert meta["tokenizer.ggml.eos_token_id"] == 2
    assert meta["tokenizer.ggml.unknown_token_id"] == 0
    assert meta["tokenizer.ggml.add_bos_token"] is True  # from the post-processor
    assert meta["tokenizer.ggml.add_space_prefix"] is True
    modelfile = (out.parent / "Modelfile").read_text()
    assert "[INST]" in modelfile and "TEMPLATE" in modelfile
    assert 'PARAMETER stop "</s>"' in modelfile


LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")


def test_llama3_style_special_tokens(tmp_path, tok):
    tok = _fresh(tok)
    tok.backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (
        "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")])
    tok.config.update(bos_token="<|begin_of_text|>", chat_template=LLAMA3_TEMPLATE,
                      add_bos_token=True)
    d = make_model(tmp_path / "m", tok)
    out = export_gguf(d)
    meta, _ = read(out)
    ids = {t: i for i, t in enumerate(meta["tokenizer.ggml.tokens"])}
    assert meta["tokenizer.ggml.pre"] == "llama-bpe"
    assert meta["tokenizer.ggml.bos_token_id"] == ids["<|begin_of_text|>"]
    assert meta["tokenizer.ggml.add_bos_token"] is True
    # both <|im_end|> and <|eot_id|> exist; the one the chat template uses ends a turn
    assert meta["tokenizer.ggml.eot_token_id"] == ids["<|eot_id|>"]
    modelfile = (out.parent / "Modelfile").read_text()
    assert "<|start_header_id|>{{ .Role }}<|end_header_id|>" in modelfile
    assert 'PARAMETER stop "<|eot_id|>"' in modelfile


def test_gpt2_style_tokenizer(tmp_path):
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(TEXTS, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = Tokenizer(backend, {"eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>"})
    d = make_model(tmp_path / "gpt2", tok, eos_token_id=0)
    out = export_gguf(d)
    meta, _ = read(out)
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    assert meta["tokenizer.ggml.merges"][0].count(" ") == 1
    assert meta["tokenizer.ggml.add_bos_token"] is False  # no post-processor adds it
    assert "tokenizer.chat_template" not in meta
    modelfile = (out.parent / "Modelfile").read_text()
    assert "No TEMPLATE" in modelfile and 'PARAMETER stop "<|endoftext|>"' in modelfile


def test_padded_vocabulary(tmp_path, tok):
    d = make_model(tmp_path / "m", tok, vocab_size=tok.vocab_size + 20)  # embedding rounded up
    meta, tensors = read(export_gguf(d))
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    assert len(tokens) == tok.vocab_size + 20 == tensors["token_embd.weight"].shape[1]
    assert tokens[-1] == f"[PAD{tok.vocab_size + 19}]" and types[-1] == 5


# -- Modelfile -------------------------------------------------------------------------------------


def test_chatml_modelfile(tmp_path, tok):
    d = make_model(tmp_path / "demo", tok, generation={"temperature": 0.7, "top_p": 0.9})
    out = export_gguf(d, tmp_path / "export" / "demo.gguf", "q8_0")
    assert out == tmp_path / "export" / "demo.gguf" and out.is_file()
    modelfile = (tmp_path / "export" / "Modelfile").read_text()
    lines = modelfile.splitlines()
    assert "FROM ./demo.gguf" in lines
    template = modelfile.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    for piece in ("{{ .System }}", "range .Messages", "{{ .Role }}", "{{ .Content }}",
                  "{{ .Prompt }}", "{{ .Response }}", "<|im_start|>assistant\n"):
        assert piece in template, piece
    assert template.count("{{") == template.count("}}")
    opened = sum(template.count(k) for k in ("{{ if", "{{- if", "{{ range", "{{- range"))
    closed = template.count("{{ end }}") + template.count("{{- end }}")
    assert opened == closed
    assert 'PARAMETER stop "<|im_end|>"' in lines
    assert 'PARAMETER stop "<|endoftext|>"' in lines
    assert "PARAMETER temperature 0.7" in lines and "PARAMETER top_p 0.9" in lines
    assert "PARAMETER num_ctx 256" in lines
    meta, _ = read(out)
    assert meta["general.sampling.temp"] == pytest.approx(0.7)
    assert meta["tokenizer.ggml.eot_token_id"] == 2 and meta["tokenizer.ggml.eos_token_id"] == 0
    assert meta["tokenizer.ggml.add_bos_token"] is False


def test_unrecognised_chat_format(tmp_path, tok):
    tok = _fresh(tok)
    tok.config["chat_template"] = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    d = make_model(tmp_path / "m", tok)
    out = export_gguf(d)
    modelfile = (out.parent / "Modelfile").read_text()
    assert "TEMPLATE" not in modelfile.replace("# No TEMPLATE", "")
    assert "tokenizer.chat_template" in modelfile
    assert read(out)[0]["tokenizer.chat_template"] == tok.config["chat_template"]


def test_chat_format_detection():
    assert chat_format(CHAT_TEMPLATE) == "chatml"
    assert chat_format(LLAMA3_TEMPLATE) == "llama3"
    assert chat_format(MISTRAL_TEMPLATE) == "mistral"
    assert chat_format([{"name": "default", "template": CHAT_TEMPLATE}]) == "chatml"
    assert chat_format(None) is None and chat_format("{{ messages }}") is None


# -- output paths, atomic writes, CLI ----------------------------------------------------------------


def test_default_output_path_and_atomic_write(tmp_path, tok, monkeypatch):
    d = make_model(tmp_path / "tiny", tok)
    out = export_gguf(d, outtype="q8_0")
    assert out == d / "gguf" / "tiny-q8_0.gguf"
    assert "FROM ./tiny-q8_0.gguf" in (d / "gguf" / "Modelfile").read_text()
    before = out.read_bytes()

    import jielong.export as export

    def boom(*a, **k):
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(export, "_encode", boom)
    with pytest.raises(RuntimeError):
        export_gguf(d, outtype="q8_0")
    assert out.read_bytes() == before  # the old file is untouched
    assert sorted(p.name for p in (d / "gguf").iterdir()) == ["Modelfile", "tiny-q8_0.gguf"]


def test_cli(tmp_path, tok, capsys):
    from jielong.cli import run

    d = make_model(tmp_path / "m", tok)
    commands = {"export": {"gguf": gguf_cmd}}
    run(["export", "gguf", str(d), "--out", str(tmp_path / "o"), "--outtype", "bf16"], commands)
    assert (tmp_path / "o" / "m-bf16.gguf").is_file()
    assert "m-bf16.gguf" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        run(["export", "gguf", str(d), "--outtype", "q4_0"], commands)


# -- mistakes ----------------------------------------------------------------------------------------


def test_user_errors(tmp_path, tok, monkeypatch):
    with pytest.raises(UserError, match="no such model directory"):
        export_gguf(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        export_gguf(tmp_path / "empty")

    d = make_model(tmp_path / "m", tok)
    with pytest.raises(UserError, match=r"outtype 'q4_0' is not one of f32, f16, bf16, q8_0"):
        export_gguf(d, outtype="q4_0")

    monkeypatch.setitem(sys.modules, "gguf", None)  # as if not installed
    with pytest.raises(UserError, match=r"pip install 'jielong\[export\]'"):
        export_gguf(d)
    monkeypatch.undo()

    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((d / "config.json").read_text())
    with pytest.raises(UserError, match="no model.safetensors"):
        export_gguf(no_weights)

    _patch_config(d, model_type="gemma")
    with pytest.raises(UserError, match=r"model_type 'gemma'.*llama, mistral, qwen2, qwen3"):
        export_gguf(d)
    _patch_config(d, model_type="llama")

    (d / "config.json").write_text('{"model_type": "llama",\n "hidden_size": }')
    with pytest.raises(UserError, match=r"config.json:2: not valid JSON"):
        export_gguf(d)


def test_tokenizer_errors(tmp_path, tok):
    d = make_model(tmp_path / "no_tok", None)
    with pytest.raises(UserError, match="no tokenizer.json"):
        export_gguf(d)
    d = make_model(tmp_path / "small", tok, vocab_size=tok.vocab_size - 10)
    with pytest.raises(UserError, match=f"has {tok.vocab_size} tokens but config.json's "
                                        f"vocab_size is {tok.vocab_size - 10}"):
        export_gguf(d)

    # SentencePiece-style without the <0xNN> byte tokens: llama.cpp would crash on an
    # unknown character, so the export refuses.
    no_bytes = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
    no_bytes.pre_tokenizer = pre_tokenizers.Metaspace()
    no_bytes.train_from_iterator(TEXTS, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False))
    d = make_model(tmp_path / "no_bytes", Tokenizer(no_bytes, {"unk_token": "<unk>"}))
    with pytest.raises(UserError, match="lacks 256 of the 256 byte tokens.*byte_fallback=True"):
        export_gguf(d)

    unigram = tokenizers.Tokenizer(models.Unigram())
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    unigram.train_from_iterator(TEXTS, trainers.UnigramTrainer(
        vocab_size=200, special_tokens=["<unk>"], unk_token="<unk>", show_progress=False))
    d = make_model(tmp_path / "unigram", Tokenizer(unigram, {"unk_token": "<unk>"}))
    with pytest.raises(UserError, match="a Unigram tokenizer"):
        export_gguf(d)

    d = make_model(tmp_path / "broken", tok)
    tj = json.loads((d / "tokenizer.json").read_text())
    tj["model"]["merges"] = [["only-one"]]
    (d / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(UserError, match="tokenizer.json: unexpected content"):
        export_gguf(d)


def test_weights_not_matching_config(tmp_path, tok):
    d = make_model(tmp_path / "m", tok, tie_word_embeddings=True)
    _patch_config(d, tie_word_embeddings=False)  # but there is no lm_head.weight
    with pytest.raises(UserError, match="output.weight.*tie_word_embeddings"):
        export_gguf(d)
    _patch_config(d, tie_word_embeddings=True, num_attention_heads=8, head_dim=16)
    with pytest.raises(UserError, match="q_proj.weight has 64 rows"):
        export_gguf(d)


def test_qwen3_output_bias_is_refused(tmp_path, tok):
    d = make_model(tmp_path / "m", tok, model_type="qwen3", attention_bias=True)
    with pytest.raises(UserError, match="o_proj.bias.*no bias on the attention output"):
        export_gguf(d)


# -- against the real consumers, when they are installed ---------------------------------------


@pytest.mark.skipif(shutil.which("go") is None, reason="needs the Go toolchain")
def test_ollama_templates_render_like_the_jinja_templates(tmp_path, tok):
    """Render the Modelfile templates with Go's text/template (Ollama's engine, with its
    missingkey=zero option and the values Ollama passes) and compare with the Jinja output."""
    from jielong.export import _OLLAMA_TEMPLATES

    (tmp_path / "go.mod").write_text("module render\n\ngo 1.19\n")
    (tmp_path / "main.go").write_text('''package main

import (
	"fmt"
	"os"
	"text/template"
)

type Message struct{ Role, Content string }

func main() {
	src, _ := os.ReadFile(os.Args[1])
	t := template.Must(template.New("").Option("missingkey=zero").Parse(string(src)))
	msgs := []*Message{{"system", "Be kind."}, {"user", "Hi"}, {"assistant", "Hello!"}, {"user", "天氣如何?"}}
	if err := t.Execute(os.Stdout, map[string]any{"System": "Be kind.", "Messages": msgs}); err != nil {
		panic(err)
	}
	fmt.Print("\\x00")
	if err := t.Execute(os.Stdout, map[string]any{"System": "", "Prompt": "Hi", "Response": "Yo"}); err != nil {
		panic(err)
	}
}
''')
    messages = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "天氣如何?"}]
    llama3 = _fresh(tok)
    llama3.config["chat_template"] = LLAMA3_TEMPLATE
    llama3.config["bos_token"] = ""  # llama.cpp adds the bos token itself
    for fmt, jinja in (("chatml", tok), ("llama3", llama3)):
        (tmp_path / f"{fmt}.tmpl").write_text(_OLLAMA_TEMPLATES[fmt])
        run = subprocess.run(["go", "run", "main.go", f"{fmt}.tmpl"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=120,
                             env={**os.environ, "GOFLAGS": "-mod=mod"})
        assert run.returncode == 0, run.stderr
        chat, one_turn = run.stdout.split("\x00")
        assert chat == jinja.apply_chat_template(messages, add_generation_prompt=True), fmt
        assert "Hi" in one_turn and one_turn.endswith("Yo" + ("<|im_end|>\n" if fmt == "chatml" else "<|eot_id|>"))


def test_llama_cpp_reproduces_the_logits(tmp_path, tok):
    """The exported file, run by llama.cpp (llama-cpp-python), gives jielong's logits and
    jielong's tokens."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from jielong.checkpoint import load_model

    text = "The weather is nice today. 今天天氣很好，我們去公園散步。"
    ids = tok.encode(text)
    for family in ("llama", "llama-bias", "qwen2", "qwen3"):
        d = make_model(tmp_path / family, tok, **FAMILIES[family])
        with torch.no_grad():
            expected = load_model(d)(torch.tensor([ids]))[0].numpy()
        for outtype, tol in (("f32", 1e-3), ("q8_0", 5e-2)):
            llm = llama_cpp.Llama(str(export_gguf(d, tmp_path / f"{family}-{outtype}.gguf", outtype)),
                                  n_ctx=64, logits_all=True, verbose=False)
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids
            llm.eval(ids)
            got = np.array(llm.scores[: len(ids)])
            assert np.abs(got - expected).max() < tol * np.abs(expected).max(), (family, outtype)


def test_sliding_window_is_refused_past_the_window(tmp_path, tok, capsys):
    """llama.cpp's llama/qwen2/qwen3 architectures read no sliding window and attend over the
    whole context: a windowed model exports only for contexts up to its window."""
    from jielong.cli import run

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
