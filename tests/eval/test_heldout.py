"""Held-out perplexity and bits per byte: checked against the model's plain forward pass by
hand, with and without sliding windows, on English and Chinese text, read from files too."""

import json
import math

import pytest
import torch
from conftest import tiny_corpus

from jielong.config import preset
from jielong.errors import UserError
from jielong.eval.heldout import heldout_text, score_texts, start_id, windows
from jielong.model import Transformer
from jielong.tokenizer import train_tokenizer

EN = "The cat sat on the mat near the river. Mei lives in Maple town and keeps a goose."
ZH = "今天天氣很好，我們去河邊散步。阿明住在龍鄉，他養了一隻貓。书店里有很多书。"


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(tiny_corpus(120), vocab_size=400, show_progress=False)


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    return Transformer(preset("test", vocab_size=tok.vocab_size)).eval()


def logprobs(model, ids: list[int]) -> torch.Tensor:
    """log p(ids[i+1] | ids[:i+1]) for each i, from one plain forward pass."""
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([ids[:-1]])).float(), -1)[0]
    return lp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]


@pytest.mark.parametrize("text", [EN, ZH])
def test_bits_per_byte_by_hand(model, tok, text):
    ids = [tok.eos_id] + tok.encode(text)
    nll = -logprobs(model, ids).sum().item()
    r = score_texts(model, tok, [text], device="cpu")
    assert r.documents == 1 and r.tokens == len(ids) - 1
    assert r.bytes == len(text.encode("utf-8"))
    assert r.nll == pytest.approx(nll, rel=1e-5)
    assert r.bits_per_byte == pytest.approx(nll / math.log(2) / r.bytes, rel=1e-5)
    assert r.ppl == pytest.approx(math.exp(nll / r.tokens), rel=1e-5)


def test_sliding_windows_equal_full_context_when_the_document_fits(model, tok):
    full = score_texts(model, tok, [EN, ZH], device="cpu")
    slid = score_texts(model, tok, [EN, ZH], max_length=200, stride=3, batch_size=1, device="cpu")
    assert slid.nll == pytest.approx(full.nll, rel=1e-5) and slid.tokens == full.tokens


def test_long_document_equals_a_hand_loop_over_windows(model, tok):
    text = " ".join([EN, ZH] * 3)
    ids = [tok.eos_id] + tok.encode(text)
    n, L, S = len(ids) - 1, 16, 5
    assert n > 3 * L
    nll, done, end, k = 0.0, 0, 0, 0
    while end < n:  # window k ends at min(n, L + kS), reads L tokens back, scores what is new
        end = min(n, L + k * S)
        begin = max(0, end - L)
        assert begin == 0 or done - begin >= L - S  # at least max_length - stride of context
        nll -= logprobs(model, ids[begin:end + 1])[done - begin:].sum().item()
        done, k = end, k + 1
    for b in (1, 64):
        r = score_texts(model, tok, [text], max_length=L, stride=S, batch_size=b, device="cpu")
        assert r.tokens == n and r.nll == pytest.approx(nll, rel=1e-5)
    assert sum(s for _, _, s in windows(n, L, S)) == n
    with pytest.raises(ValueError, match="stride"):
        windows(n, L, L + 1)
    with pytest.raises(UserError, match="stride 17: must be between 1 and max_length"):
        score_texts(model, tok, [text], max_length=L, stride=L + 1, device="cpu")
    with pytest.raises(UserError, match="max_length 257: must be between 2 and the model's context"):
        score_texts(model, tok, [text], max_length=257, device="cpu")


def test_documents_from_files_and_a_bos_token(model, tok, tmp_path):
    (tmp_path / "a.txt").write_text(EN, encoding="utf-8")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": ZH}, ensure_ascii=False) + "\n"
                                      + json.dumps({"text": EN}) + "\n", encoding="utf-8")
    r = heldout_text(model, tok, [tmp_path], device="cpu")
    direct = score_texts(model, tok, [EN, ZH, EN], device="cpu")
    assert r.documents == 3 and r.bytes == direct.bytes and r.nll == pytest.approx(direct.nll, rel=1e-5)
    assert heldout_text(model, tok, [tmp_path], max_documents=1, device="cpu").documents == 1

    assert start_id(tok) == tok.eos_id
    tok.config["bos_token"] = "<|im_start|>"
    try:
        assert start_id(tok) == tok.im_start_id
        ids = [tok.im_start_id] + tok.encode(EN)
        r = score_texts(model, tok, [EN], device="cpu")
        assert r.nll == pytest.approx(-logprobs(model, ids).sum().item(), rel=1e-5)
    finally:
        tok.config["bos_token"] = None
