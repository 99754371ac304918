"""`jielong export gguf` end to end: every family and type read back with gguf's reader,
shards, output paths and atomic writes, the CLI, user errors, and llama.cpp's own logits."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf_helpers import (
    ARCH,
    FAMILIES,
    FILE_TYPE,
    MATRIX_TYPE,
    hf_to_gguf,
    make_model,
    make_tokenizer,
    patch_config,
    read,
    values,
)
from safetensors.torch import load_file

from jielong.checkpoint import load_model, save_model
from jielong.cli import run
from jielong.config import preset
from jielong.errors import UserError
from jielong.export import gguf_file
from jielong.export.gguf import export_gguf, gguf_cmd
from jielong.export.tensors import unpermute_qk
from jielong.model import Transformer
from jielong.tokenizer import CHAT_TEMPLATE, Tokenizer

gguf = pytest.importorskip("gguf")
T = gguf.GGMLQuantizationType


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return make_tokenizer()


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory, tok) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {name: make_model(root / name, tok, seed=i, **kw)
            for i, (name, kw) in enumerate(FAMILIES.items())}


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


def test_default_output_path_and_atomic_write(tmp_path, tok, monkeypatch):
    d = make_model(tmp_path / "tiny", tok)
    out = export_gguf(d, outtype="q8_0")
    assert out == d / "gguf" / "tiny-q8_0.gguf"
    assert "FROM ./tiny-q8_0.gguf" in (d / "gguf" / "Modelfile").read_text()
    before = out.read_bytes()

    def boom(*a, **k):
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(gguf_file, "encode", boom)
    with pytest.raises(RuntimeError):
        export_gguf(d, outtype="q8_0")
    assert out.read_bytes() == before  # the old file is untouched
    assert sorted(p.name for p in (d / "gguf").iterdir()) == ["Modelfile", "tiny-q8_0.gguf"]


def test_cli(tmp_path, tok, capsys):
    d = make_model(tmp_path / "m", tok)
    commands = {"export": {"gguf": gguf_cmd}}
    run(["export", "gguf", str(d), "--out", str(tmp_path / "o"), "--outtype", "bf16"], commands)
    assert (tmp_path / "o" / "m-bf16.gguf").is_file()
    assert "m-bf16.gguf" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        run(["export", "gguf", str(d), "--outtype", "q4_0"], commands)


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

    patch_config(d, model_type="gemma")
    with pytest.raises(UserError, match=r"model_type 'gemma'.*llama, mistral, qwen2, qwen3"):
        export_gguf(d)
    patch_config(d, model_type="llama")

    (d / "config.json").write_text('{"model_type": "llama",\n "hidden_size": }')
    with pytest.raises(UserError, match=r"config.json:2: not valid JSON"):
        export_gguf(d)


def test_llama_cpp_reproduces_the_logits(tmp_path, tok):
    """The exported file, run by llama.cpp (llama-cpp-python), gives jielong's logits and
    jielong's tokens."""
    llama_cpp = pytest.importorskip("llama_cpp")

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
