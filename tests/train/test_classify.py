"""Classification finetuning: the split, the data's errors, and a tiny spam filter trained end
to end (the model itself: tests/test_classifier.py; the metrics: tests/eval/test_classification.py)."""

import json
import random
import shutil

import pytest
import torch
from spam_texts import HAM, SPAM

from jielong.checkpoint import save_model
from jielong.classifier import (
    encode_texts,
    from_pretrained_lm,
    load_classifier,
    pad_batch,
    predict,
    save_classifier,
)
from jielong.config import preset
from jielong.errors import UserError
from jielong.model import Transformer
from jielong.tokenizer import train_tokenizer
from jielong.train.classify import classify, read_examples, stratified_split
from jielong.train.loop import TrainConfig


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n"
                            for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(SPAM * 3 + HAM * 3, vocab_size=300)


def test_stratified_split_holds_out_each_class():
    y = [0] * 10 + [1] * 5 + [2] * 1
    tr, va = stratified_split(y, 0.2, seed=3)
    assert sorted(tr + va) == list(range(16))
    assert [sum(1 for i in va if y[i] == k) for k in (0, 1, 2)] == [2, 1, 0]
    assert stratified_split(y, 0.2, seed=3) == (tr, va)


def test_data_errors_name_file_and_line(tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "a", "label": "x"}, "{not json"])
    with pytest.raises(UserError, match=r"bad\.jsonl:2: not valid JSON"):
        read_examples(bad)
    missing = write_jsonl(tmp_path / "missing.jsonl", [{"text": "a", "label": 1}, {"text": "b"}])
    with pytest.raises(UserError, match=r"missing\.jsonl:2: no 'label' field .*--label_field"):
        read_examples(missing)
    empty = write_jsonl(tmp_path / "empty.jsonl", [{"text": "  ", "label": 1}])
    with pytest.raises(UserError, match=r"empty\.jsonl:1: empty text"):
        read_examples(empty)
    other = write_jsonl(tmp_path / "other.jsonl", [{"body": "a", "y": [1]}])
    with pytest.raises(UserError, match=r"other\.jsonl:1: label field 'y' is list"):
        read_examples(other, text_field="body", label_field="y")
    ok = write_jsonl(tmp_path / "ok.jsonl", [{"t": "a", "l": 7}])
    assert [e.label for e in read_examples(ok, text_field="t", label_field="l")] == ["7"]
    single = write_jsonl(tmp_path / "single.jsonl", [{"text": t, "label": "spam"} for t in SPAM[:4]])
    with pytest.raises(UserError, match=r"single\.jsonl:1: every example .* label 'spam'"):
        classify(str(single), model=str(tmp_path / "unused"), out=str(tmp_path / "run"))
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}])
    val = write_jsonl(tmp_path / "val.jsonl", [{"text": "a", "label": "x"}, {"text": "c", "label": "z"}])
    with pytest.raises(UserError, match=r"val\.jsonl:2: label 'z' does not occur in the training"):
        classify(str(train), model=str(tmp_path / "unused"), val=str(val), out=str(tmp_path / "run"))


def test_spam_filter_trains_end_to_end_in_english_and_chinese(tok, tmp_path, capsys):
    cfg = preset("test", vocab_size=tok.vocab_size, eos_token_id=tok.eos_id, pad_token_id=tok.eos_id)
    torch.manual_seed(0)
    base = save_model(tmp_path / "base", Transformer(cfg), tok)
    rows = [{"text": t, "label": "spam"} for t in SPAM] + [{"text": t, "label": "ham"} for t in HAM]
    random.Random(0).shuffle(rows)
    data = write_jsonl(tmp_path / "spam.jsonl", rows)
    train = TrainConfig(steps=80, batch_size=8, lr=3e-3, warmup_steps=4, eval_every=40,
                        save_every=40, device="cpu", seed=0)
    out = tmp_path / "run"
    summary = classify(str(data), model=str(base), out=str(out), val_fraction=0.25, max_len=64,
                       train=train)
    printed = capsys.readouterr().out
    assert "macro avg" in printed and "confusion matrix" in printed
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    evals = [m for m in metrics if "val_loss" in m]
    assert [m["step"] for m in evals] == [40, 80]
    assert {"val_loss", "accuracy", "macro_precision", "macro_recall", "macro_f1"} <= evals[-1].keys()
    assert summary["accuracy"] >= 0.9 and summary["macro_f1"] >= 0.89  # 10 held out: ≤ 1 wrong
    report = json.loads((out / "report.json").read_text())
    assert report["n"] == 10 and report["labels"] == ["ham", "spam"]
    assert (out / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(UserError, match="is this a causal LM"):
        load_classifier(base)
    clf, tok2 = load_classifier(out / "model")
    got = predict(clf, tok2, ["FREE cash prize, click now to claim", "明天一起吃午飯吧",
                              "免费领取现金大奖，点击链接"])
    assert [label for label, _ in got] == ["spam", "ham", "spam"]
    assert all(0.5 < p <= 1 for _, p in got)
    # Checkpoints are classifier directories; a run resumed from the middle retraces its steps.
    ckpts = sorted((out / "checkpoints").iterdir())
    assert [p.name for p in ckpts] == ["step-0000040", "step-0000080"]
    assert load_classifier(ckpts[0])[0].labels == ["ham", "spam"]
    shutil.rmtree(ckpts[1])
    again = classify(str(data), model=str(base), out=str(out), val_fraction=0.25, max_len=64,
                     train=train, resume=True)
    resumed = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m.get("loss") for m in resumed] == [m.get("loss") for m in metrics]
    assert again["accuracy"] == summary["accuracy"]


def test_from_a_hugging_face_llama3_with_bos(tmp_path):
    transformers = pytest.importorskip("transformers")
    from hf_families import make_hf_dir

    base = make_hf_dir(tmp_path, "llama3")
    clf, tok = from_pretrained_lm(base, ["neg", "pos"], seed=0)
    d = save_classifier(tmp_path / "clf", clf, tok)
    texts = ["The cat sat on the mat near the river.", "今天天氣很好", "hi"]
    ids, cut = encode_texts(tok, texts, 8)
    assert cut == 1 and all(s[0] == tok.backend.token_to_id("<|begin_of_text|>") for s in ids)
    hf_tok = transformers.AutoTokenizer.from_pretrained(d)
    assert ids == hf_tok(texts, truncation=True, max_length=8)["input_ids"]
    ref = transformers.AutoModelForSequenceClassification.from_pretrained(d, dtype=torch.float32).eval()
    x = pad_batch(ids, clf.config.pad_token_id)
    with torch.no_grad():
        torch.testing.assert_close(clf.eval()(x), ref(input_ids=x).logits, atol=1e-4, rtol=0)
