"""Contextual embeddings: token spans by character offsets, cosine tables on planted vectors."""

import numpy as np
import pytest
import torch

from jielong.config import preset
from jielong.errors import UserError
from jielong.inspect import embeddings as emb
from jielong.inspect.embeddings import cosine_table, embeddings_cmd, pca_2d, word_span, word_vectors
from jielong.model import Transformer
from jielong.tokenizer import train_tokenizer

SENTENCES = ["我買了新的蘋果手機", "树上的苹果红了", "I ate an apple today", "蘋果很好吃"]


def test_word_span_by_character_offsets():
    offsets = [(0, 0), (0, 2), (2, 3), (3, 5), (5, 6)]  # a BOS, then pieces
    assert word_span(offsets, 2, 5) == [2, 3]
    assert word_span(offsets, 1, 3) == [1, 2]  # a token across the word's edge counts


def test_cosine_table_on_planted_vectors_in_three_scripts(monkeypatch):
    # Plant: the hidden state at each position is a one-hot of its character's own code, so
    # a word's vector is the mean of its characters' one-hots and the cosines are known.
    tok = train_tokenizer(SENTENCES * 5, vocab_size=300)
    m = Transformer(preset("test", vocab_size=tok.vocab_size)).eval()

    def planted(model, x):
        ids = x[0].tolist()
        text_pos = [tok.decode([i]) for i in ids]
        h = torch.zeros(3, 1, len(ids), 4096)
        for t, piece in enumerate(text_pos):
            for ch in piece:
                h[:, 0, t, ord(ch) % 4096] += 1.0
        h[1] *= 2  # scale: cosine is unchanged
        return h

    monkeypatch.setattr(emb, "residual_stream", planted)
    words = {"蘋果": ["我買了新的蘋果手機", "蘋果很好吃"], "苹果": ["树上的苹果红了", "苹果手机"],
             "apple": ["I ate an apple today", "an apple"]}
    for word, sents in words.items():
        v = word_vectors(m, tok, word, sents)
        t = cosine_table(v)
        assert t.shape == (3, 2, 2)
        assert np.allclose(np.diagonal(t, axis1=1, axis2=2), 1)
        assert t[0, 0, 1] > 0.3  # both sentences' spans contain the word's characters
    a = np.array([[1.0, 0, 0], [1, 1, 0], [0, 0, 2]])
    assert np.allclose(cosine_table(a), [[1, 2 ** -0.5, 0], [2 ** -0.5, 1, 0], [0, 0, 1]])
    xy = pca_2d(np.array([[0.0, 0], [2, 0], [4, 0]]))
    assert np.allclose(np.abs(xy[:, 0]), [2, 0, 2]) and np.allclose(xy[:, 1], 0)


def test_command_writes_tables_and_plots(tmp_path, capsys):
    from jielong.checkpoint import save_model

    tok = train_tokenizer(SENTENCES * 5, vocab_size=300)
    torch.manual_seed(0)
    d = save_model(tmp_path / "m", Transformer(preset("test", vocab_size=tok.vocab_size)), tok)
    res = embeddings_cmd("蘋果", ["我買了新的蘋果手機", "蘋果很好吃"], model=str(d), out=str(tmp_path / "e"),
                         device="cpu")
    L = preset("test").num_hidden_layers
    assert res["cosine"].shape == (L + 1, 2, 2)
    assert (tmp_path / "e" / f"pca_layer{L}.png").stat().st_size > 1000
    assert "layer 0 (embeddings)" in capsys.readouterr().out
    with pytest.raises(UserError, match="does not contain"):
        embeddings_cmd("蘋果", ["樹上的蘋果", "apple"], model=str(d), out=str(tmp_path / "e"), device="cpu")
