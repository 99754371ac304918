"""The sequence classifier against transformers' sequence classifiers: logits, padding on
either side, truncation, the directory it saves and loads, and reward scoring (one label)."""

import json

import pytest
import torch
from conftest import bot, user
from polite_pairs import polite_tokenizer, tiny_reward_model
from spam_texts import HAM, SPAM

from jielong.checkpoint import save_model
from jielong.classifier import (
    Classifier,
    encode_scored,
    encode_texts,
    load_classifier,
    load_reward,
    pad_batch,
    reward_scores,
    save_classifier,
)
from jielong.config import preset
from jielong.errors import UserError
from jielong.model import Transformer
from jielong.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(SPAM * 3 + HAM * 3, vocab_size=300)


def tiny_classifier(tok, model_type: str, labels=("ham", "spam", "其他"), seed: int = 0) -> Classifier:
    cfg = preset("test", vocab_size=tok.vocab_size, model_type=model_type,
                 eos_token_id=tok.eos_id, pad_token_id=tok.eos_id)
    torch.manual_seed(seed)
    clf = Classifier(cfg, list(labels))
    with torch.no_grad():  # weights far from their init, norms and biases included
        for p in clf.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return clf.eval()


def right_padded(tok, texts, pad_id):
    ids, _ = encode_texts(tok, texts, 64)
    x = pad_batch(ids, pad_id)
    mask = (torch.arange(x.shape[1])[None] < torch.tensor([len(s) for s in ids])[:, None]).long()
    return ids, x, mask


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_logits_match_transformers_sequence_classifier(tok, tmp_path, model_type):
    transformers = pytest.importorskip("transformers")
    clf = tiny_classifier(tok, model_type)
    d = save_classifier(tmp_path / "clf", clf, tok)
    config = json.loads((d / "config.json").read_text())
    family = {"llama": "Llama", "qwen2": "Qwen2"}[model_type]
    assert config["architectures"] == [f"{family}ForSequenceClassification"]
    assert config["id2label"] == {"0": "ham", "1": "spam", "2": "其他"}
    assert config["pad_token_id"] == tok.eos_id and config["num_labels"] == 3
    ref = transformers.AutoModelForSequenceClassification.from_pretrained(d, dtype=torch.float32).eval()
    assert type(ref).__name__ == f"{family}ForSequenceClassification"
    assert not any("lm_head" in k for k in ref.state_dict())
    _, x, mask = right_padded(tok, [SPAM[0], HAM[3], "hi", SPAM[12] + HAM[15]], tok.eos_id)
    with torch.no_grad():
        ours = clf(x)
        theirs = ref(input_ids=x, attention_mask=mask).logits
    assert ours.abs().max() > 0.1  # not trivially small
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    back, tok2 = load_classifier(d)
    assert back.labels == ["ham", "spam", "其他"] and tok2.encode(HAM[0]) == tok.encode(HAM[0])
    with torch.no_grad():
        torch.testing.assert_close(back(x), ours, atol=0, rtol=0)


def test_padding_does_not_change_a_rows_logits(tok):
    clf = tiny_classifier(tok, "qwen2")
    texts = [HAM[0], SPAM[10], "ok"]
    ids, x, mask = right_padded(tok, texts, tok.eos_id)
    with torch.no_grad():
        batched = clf(x)
        for i, s in enumerate(ids):  # alone, unpadded
            torch.testing.assert_close(clf(torch.tensor([s]))[0], batched[i], atol=1e-5, rtol=0)
        more = torch.cat([x, torch.full((3, 9), tok.eos_id)], dim=1)  # more padding
        torch.testing.assert_close(clf(more), batched, atol=1e-5, rtol=0)
        # Left padding works too, given the attention mask (positions are relative).
        left = torch.stack([torch.cat([torch.full((x.shape[1] - len(s),), tok.eos_id),
                                       torch.tensor(s)]) for s in ids])
        torch.testing.assert_close(clf(left, mask.flip(1)), batched, atol=1e-5, rtol=0)


def test_truncation_keeps_the_start(tok):
    ids, cut = encode_texts(tok, [SPAM[0], "hi"], 5)
    assert cut == 1 and ids[0] == tok.encode(SPAM[0])[:5] and ids[1] == tok.encode("hi")


@pytest.fixture(scope="module")
def polite_tok():
    return polite_tokenizer()


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_scores_match_transformers_with_one_label(polite_tok, tmp_path, model_type):
    tok = polite_tok
    transformers = pytest.importorskip("transformers")
    rm = tiny_reward_model(tok, model_type)
    d = save_classifier(tmp_path / "rm", rm, tok)
    config = json.loads((d / "config.json").read_text())
    assert config["num_labels"] == 1 and config["id2label"] == {"0": "reward"}
    assert config["problem_type"] == "regression"
    convs = [[user("今天天氣如何？"), bot("請帶傘，會下雨。")],
             [user("Ask me to sit down."), bot("Please sit down.")],
             [{"role": "system", "content": "简短回答。"}, user("叫我关灯。"), bot("快关灯！"),
              user("再说一次"), bot("请关灯。")]]
    ids = [encode_scored(tok, c[:-1], c[-1:]) for c in convs]
    x = pad_batch(ids, tok.eos_id)
    mask = (torch.arange(x.shape[1])[None] < torch.tensor([len(s) for s in ids])[:, None]).long()
    for kwargs in ({}, {"num_labels": 1}):
        ref = transformers.AutoModelForSequenceClassification.from_pretrained(
            d, dtype=torch.float32, **kwargs).eval()
        assert ref.config.num_labels == 1 and ref.score.weight.shape[0] == 1
        with torch.no_grad():
            theirs = ref(input_ids=x, attention_mask=mask).logits[:, 0]
        ours = torch.tensor(reward_scores(rm, tok, convs, batch_size=2))
        assert ours.abs().max() > 0.1 and ours.std() > 1e-3  # not trivially small or equal
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    back, tok2 = load_reward(d)
    assert torch.tensor(reward_scores(back, tok2, convs)).allclose(ours, atol=1e-6)


def test_load_reward_and_reward_scores_reject_wrong_input(polite_tok, tmp_path):
    tok = polite_tok
    cfg = preset("test", vocab_size=tok.vocab_size, eos_token_id=tok.eos_id, pad_token_id=tok.eos_id)
    d = save_classifier(tmp_path / "clf", Classifier(cfg, ["neg", "pos", "mixed"]), tok)
    with pytest.raises(UserError, match=r"clf: a classifier with 3 classes \(neg, pos, mixed\), not a reward model"):
        load_reward(d)
    with pytest.raises(UserError, match="is this a causal LM"):
        load_reward(save_model(tmp_path / "lm", Transformer(cfg), tok))
    rm = tiny_reward_model(tok)
    with pytest.raises(UserError, match=r"conversation 1: must end with the assistant reply"):
        reward_scores(rm, tok, [[user("q"), bot("a")], [user("q")]])
    assert reward_scores(rm, tok, []) == []
