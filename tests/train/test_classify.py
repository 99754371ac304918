"""Classification finetuning: the model against transformers' sequence classifiers, the
data's errors, the metrics, and a tiny spam filter trained end to end."""

import json
import random
import shutil

import pytest
import torch

from jielong.checkpoint import save_model
from jielong.config import preset
from jielong.errors import UserError
from jielong.model import Transformer
from jielong.tokenizer import train_tokenizer
from jielong.train.classify import (
    Classifier,
    classification_report,
    classify,
    encode_texts,
    format_report,
    from_pretrained_lm,
    load_classifier,
    pad_batch,
    predict,
    read_examples,
    save_classifier,
    stratified_split,
)
from jielong.train.loop import TrainConfig

SPAM = [
    "WIN a FREE prize now! Click here to claim your cash reward",
    "Congratulations, you won a free iPhone, click the link to claim",
    "Free money! Claim your cash prize today, click now",
    "You are selected to win a free cruise, click to claim the prize",
    "Free pills and free delivery, click here now to claim",
    "Claim your free gift card now, limited offer, click the link",
    "URGENT: you won cash, click here to claim your free reward",
    "Win big! Free casino bonus, click now and claim the prize",
    "Win money fast with free tips, click to claim",
    "Exclusive free offer: click now to claim your cash prize",
    "恭喜您中獎了！免費領取大獎，請立即點擊連結",
    "免費送您現金紅包，點擊連結馬上領取",
    "您已中獎，免費領取iPhone，立即點擊",
    "限時免費優惠，點擊領取現金大獎",
    "恭喜中獎！點擊連結免費領取獎金",
    "免費贈送禮品卡，立即點擊領取",
    "您获得免费大奖，请立即点击链接领取现金",
    "恭喜中奖！免费领取红包，点击链接",
    "免费送现金，点击领取大奖",
    "限时免费，点击链接领取奖金",
]
HAM = [
    "Are we still meeting for lunch tomorrow at noon?",
    "Please send me the report before the meeting on Friday",
    "The weather is nice today, let's walk by the river",
    "Mom asked if you can pick up the kids after school",
    "I finished reading the book you lent me, thank you",
    "Can you review my pull request when you have time?",
    "The train was late again this morning",
    "Let's have dinner with the family on Sunday",
    "Thanks for your help with the project yesterday",
    "The cat sat on the mat near the window all afternoon",
    "明天中午我們一起吃午飯好嗎？",
    "請在星期五開會前把報告寄給我",
    "今天天氣很好，我們去河邊散步吧",
    "媽媽問你放學後能不能去接弟弟",
    "謝謝你借我的書，我已經看完了",
    "週末我們全家一起去公園野餐",
    "明天上午开会，请准时参加",
    "今天天气很好，我们去河边散步",
    "谢谢你昨天帮我搬家",
    "晚上一起看电影吧，七点在门口见",
]


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n"
                            for r in rows), encoding="utf-8")
    return path


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


def test_classification_report_exact():
    y_true = ["a", "a", "a", "b", "b", "c"]
    y_pred = ["a", "a", "b", "b", "c", "a"]
    r = classification_report(y_true, y_pred, ["a", "b", "c"])
    assert r["confusion"] == [[2, 1, 0], [0, 1, 1], [1, 0, 0]]
    assert r["accuracy"] == 3 / 6
    a, b, c = (r["per_class"][k] for k in "abc")
    assert (a["precision"], a["recall"], a["f1"], a["support"]) == (2 / 3, 2 / 3, 2 * (4 / 9) / (4 / 3), 3)
    assert (b["precision"], b["recall"], b["f1"], b["support"]) == (1 / 2, 1 / 2, 2 * (1 / 4) / 1, 2)
    assert (c["precision"], c["recall"], c["f1"], c["support"]) == (0.0, 0.0, 0.0, 1)
    assert r["macro"]["precision"] == pytest.approx((2 / 3 + 1 / 2) / 3, abs=0)
    assert r["macro"]["recall"] == pytest.approx((2 / 3 + 1 / 2) / 3, abs=0)
    assert r["macro"]["f1"] == pytest.approx((2 / 3 + 1 / 2) / 3, abs=0)
    assert r["weighted"]["f1"] == pytest.approx((3 * 2 / 3 + 2 * 1 / 2) / 6, abs=0)
    plain = format_report(r, color=False)
    assert "\033" not in plain and "macro avg" in plain and "0.667" in plain
    assert "\033[" in format_report(r, color=True)


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
