"""The cross-encoder reranker: scores equal to transformers' one-label BertForSequenceClassification
and XLMRobertaForSequenceClassification (bge-reranker's layout), read and written (training: tests/train/test_rerank.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_encoder import make_bert_dir
from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

from jielong.errors import UserError
from jielong.rag.rerank import Reranker

QUERY = "阿明住在哪裡？"
PASSAGES = ["阿明住在龍鄉，他養了一隻貓。", "阿明住在龙乡，他养了一只猫。", "Mei lives in Maple town.", "書"]
SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


def xlmr_tokenizer(texts) -> Backend:
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    chars = sorted({c for t in texts for c in t.lower() if not c.isspace()})
    pieces = [(t, 0.0) for t in specials] + [("▁", -3.0)] + [(c, -8.0) for c in chars]
    tok = Backend(models.Unigram(pieces, unk_id=3))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tok.decoder = decoders.Metaspace()
    tok.add_special_tokens(specials)
    return tok


def hf_scores(model, d, pad):
    from transformers import PreTrainedTokenizerFast
    tok = PreTrainedTokenizerFast(tokenizer_file=str(d / "tokenizer.json"), pad_token=pad)
    x = tok([QUERY] * len(PASSAGES), PASSAGES, padding=True, return_tensors="pt",
            return_token_type_ids=model.config.model_type == "bert")
    with torch.no_grad():
        return model(**x).logits[:, 0].tolist()


@pytest.mark.parametrize("family", ["bert", "xlm-roberta"])
def test_scores_equal_transformers_both_ways(tmp_path, family):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if family == "bert":
        d = make_bert_dir(tmp_path / "base", [QUERY, *PASSAGES])
        hf = transformers.BertForSequenceClassification.from_pretrained(d, num_labels=1)
        pad = "[PAD]"
    else:
        tok = xlmr_tokenizer([QUERY, *PASSAGES])
        hf = transformers.XLMRobertaForSequenceClassification(transformers.XLMRobertaConfig(
            vocab_size=tok.get_vocab_size(), max_position_embeddings=66, type_vocab_size=1, pad_token_id=1,
            bos_token_id=0, eos_token_id=2, num_labels=1, **SIZES))
        d = tmp_path / "base"
        hf.save_pretrained(d)
        tok.save(str(d / "tokenizer.json"))
        pad = "<pad>"
    hf = hf.eval()
    with torch.no_grad():  # every weight off its init, the head's included
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "tokenizer.json").write_bytes((d / "tokenizer.json").read_bytes())
    ref = hf_scores(hf, tmp_path / "hf", pad)
    ours = Reranker.load(tmp_path / "hf")
    np.testing.assert_allclose(ours.score(QUERY, PASSAGES), ref, atol=1e-4)
    ours.save(tmp_path / "ours")  # and back: transformers reads ours
    back = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "ours").eval()
    np.testing.assert_allclose(hf_scores(back, tmp_path / "ours", pad), ref, atol=1e-4)
    if family == "bert":  # a plain encoder folder has no head
        with pytest.raises(UserError, match="not a reranker"):
            Reranker.load(d)

