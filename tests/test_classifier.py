"""The sequence classifier against transformers' sequence classifiers: logits, padding on
either side, truncation, and the directory it saves and loads."""

import json

import pytest
import torch
from spam_texts import HAM, SPAM

from jielong.classifier import Classifier, encode_texts, load_classifier, pad_batch, save_classifier
from jielong.config import preset
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
