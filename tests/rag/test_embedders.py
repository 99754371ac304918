"""The embedders: unit vectors equal to the encoder's / the server's own computation, the
query instruction, and load_embedder's choice by model_type (繁, 简 and English texts)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import one_thread_tiny_model
from tiny_encoder import make_bert_dir

from jielong.encoder import Encoder
from jielong.errors import UserError
from jielong.model import mean_pooled
from jielong.rag.embed import (
    BGE_ZH_QUERY,
    DecoderEmbedder,
    EncoderEmbedder,
    embed_queries,
    load_embedder,
)

TEXTS = ["今天天氣很好，我們去河邊散步。", "今天天气很好，我们去河边散步。", "The cat sat on the mat.", "書"]


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return make_bert_dir(tmp_path_factory.mktemp("bert"), TEXTS + [BGE_ZH_QUERY], pooling="mean")


def test_encoder_embedder_is_the_encoders_pooling_normalised(bert):
    emb = load_embedder(bert)
    assert isinstance(emb, EncoderEmbedder) and emb.dim == 32
    v = emb.embed(TEXTS)
    assert v.dtype == np.float32 and v.shape == (4, 32)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    enc = Encoder.load(bert, pooling="mean", normalize=False)
    ref = F.normalize(enc.embed(TEXTS), dim=-1).numpy()
    np.testing.assert_allclose(v, ref, atol=1e-5)
    assert not np.allclose(v[0], v[1])  # 繁 and 简 are different token strings to a random model
    assert emb.name.startswith("encoder:") and ":mean:" in emb.name


def test_query_prefix_is_applied_to_queries_only_and_named(bert, tmp_path):
    plain, bge = load_embedder(bert), load_embedder(bert, query_prefix=BGE_ZH_QUERY)
    assert plain.name != bge.name and bge.name.endswith(BGE_ZH_QUERY)
    np.testing.assert_array_equal(bge.embed(TEXTS), plain.embed(TEXTS))  # passages: no prefix
    np.testing.assert_allclose(embed_queries(bge, ["書"]), plain.embed([BGE_ZH_QUERY + "書"]), atol=1e-6)
    # a folder that declares its query prompt (sentence-transformers' "prompts") gets it by default
    d = tmp_path / "prompted"
    shutil.copytree(bert, d)
    (d / "config_sentence_transformers.json").write_text(json.dumps({"prompts": {"query": "問："}}))
    assert load_embedder(d).query_prefix == "問："
    assert load_embedder(d, query_prefix="").query_prefix == ""
    # another folder with the same name but other weights is another embedder
    other = make_bert_dir(tmp_path / "x" / bert.name, TEXTS, pooling="mean", seed=1)
    assert load_embedder(other).name != plain.name


def test_decoder_embedder_is_what_v1_embeddings_returns(tmp_path):
    with one_thread_tiny_model(tmp_path) as d:
        emb = load_embedder(d)
        assert isinstance(emb, DecoderEmbedder) and emb.name.startswith("decoder:")
        v = emb.embed(TEXTS)  # batched, right-padded
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
        for text, row in zip(TEXTS, v, strict=True):  # one at a time, as the engine computes it
            ids = torch.tensor([emb.tokenizer.encode(text)])
            with torch.no_grad():
                by_hand = F.normalize(emb.model(ids, hidden_only=True)[0].mean(0), dim=0)
                engine = mean_pooled(emb.model, ids, torch.tensor([ids.shape[1]]))[0]
            np.testing.assert_allclose(row, by_hand.numpy(), atol=1e-5)
            np.testing.assert_allclose(row, engine.numpy(), atol=1e-5)
        with pytest.raises(UserError, match="text 1 is empty"):
            emb.embed(["書", "  "])


def test_load_embedder_refuses_what_it_cannot_embed(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        load_embedder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(UserError, match="model_type 't5'"):
        load_embedder(tmp_path)
