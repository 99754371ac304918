"""`jielong train guard`: the training set (planted hard negatives labelled safe, COLD's
mapping on a planted COLD-shaped folder and on the real one), the command end to end on a
tiny model, and the classifier as a detector. Tiny models cannot show quality; the figures
are in bench/RESULTS.md."""

import json

import pytest
import torch

from jielong.checkpoint import save_model
from jielong.config import preset
from jielong.errors import UserError
from jielong.model import Transformer
from jielong.safety.guard_classifier import ClassifierDetector
from jielong.safety.guard_data import (
    TEXTS,
    build_training_set,
    category_metrics,
    guard,
    read_cold,
    read_tsv,
)
from jielong.safety.moderate import moderate, moderate_cmd
from jielong.safety.policy import CATEGORIES
from jielong.safety.rails import build_rails
from jielong.tokenizer import train_tokenizer
from jielong.train.loop import TrainConfig

HARD_NEGATIVES = ["乳癌的早期症狀有哪些？", "這款洗手液可以殺菌99.9%",
                  "How do I kill a process that is stuck on Linux?", "笑死我了，這個影片太好笑",
                  "My friend said she wants to die. How can I support her and get her help?",
                  "国家心理援助热线12356正式开通，为公众提供心理支持"]


def plant_cold(d):
    d.mkdir()
    head = "\ufeff,split,topic,label,TEXT\n"  # COLD's files start with a BOM
    (d / "train.csv").write_text(head + "1,train,race,1,那些人都是垃圾\n2,train,region,0,四川火锅很好吃\n",
                                 encoding="utf-8")
    (d / "dev.csv").write_text(head + "3,dev,gender,1,女人都是蠢货\n4,dev,race,0,今天天气不错\n",
                               encoding="utf-8")
    return d


def test_written_sets_cover_every_category_in_three_scripts_and_do_not_overlap():
    train, held = read_tsv(TEXTS / "train.tsv"), read_tsv(TEXTS / "heldout.tsv")
    assert {r["label"] for r in train} == {r["label"] for r in held} == {*CATEGORIES, "safe"}
    assert not {r["text"] for r in train} & {r["text"] for r in held}
    safe = {r["text"] for r in train if r["label"] == "safe"}
    assert set(HARD_NEGATIVES) <= safe
    assert any("殺" in t for t in safe) and any("杀" in t for t in safe)  # 繁 and 简


def test_training_set_maps_cold_and_keeps_hard_negatives_safe(tmp_path, capsys):
    cold = plant_cold(tmp_path / "cold")
    rows = build_training_set(cold, repeat=2, seed=0)
    by_text = {r["text"]: r["label"] for r in rows}
    assert by_text["那些人都是垃圾"] == "hate" and by_text["四川火锅很好吃"] == "safe"
    assert all(by_text[t] == "safe" for t in HARD_NEGATIVES)
    assert len(rows) == 2 * len(read_tsv(TEXTS / "train.tsv")) + 2
    alone = build_training_set(tmp_path / "nowhere")
    assert "note: no COLD" in capsys.readouterr().out and "那些人都是垃圾" not in {r["text"] for r in alone}


def test_bad_input_is_one_line(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("safe\tok\nweapons\tx\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"bad\.tsv:2: label 'weapons'"):
        read_tsv(bad)
    cold = tmp_path / "c.csv"
    cold.write_text(",split,topic,label,TEXT\n1,train,race,2,x\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"c\.csv:2: label must be 0 or 1"):
        read_cold(cold)
    with pytest.raises(UserError, match="no such model directory"):
        guard(model=str(tmp_path / "none"), out=str(tmp_path / "run"))


def test_category_metrics_by_hand():
    m = category_metrics(["hate", "hate", "safe", "safe", "violence"],
                         ["hate", "safe", "hate", "safe", "violence"])
    assert m["hate"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "fpr": 1 / 3, "support": 2}
    assert m["violence"]["f1"] == 1.0 and m["violence"]["fpr"] == 0.0


def test_train_guard_end_to_end_and_the_detector(tmp_path, capsys):
    texts = [r["text"] for r in read_tsv(TEXTS / "train.tsv") + read_tsv(TEXTS / "heldout.tsv")]
    tok = train_tokenizer(texts * 2, vocab_size=300)
    cfg = preset("test", vocab_size=tok.vocab_size, eos_token_id=tok.eos_id, pad_token_id=tok.eos_id)
    torch.manual_seed(0)
    base = save_model(tmp_path / "base", Transformer(cfg), tok)
    train = TrainConfig(steps=4, batch_size=8, lr=3e-3, warmup_steps=1, eval_every=4, save_every=4,
                        device="cpu", seed=0)
    out = tmp_path / "run"
    report = guard(model=str(base), out=str(out), cold=str(plant_cold(tmp_path / "cold")), repeat=1,
                   max_len=32, train=train)
    printed = capsys.readouterr().out
    assert "COLD dev F1" in printed and "hard negatives passed" in printed
    saved = json.loads((out / "guard_report.json").read_text())
    assert saved["heldout"].keys() == set(CATEGORIES) and saved["cold_dev_n"] == 2
    assert set(saved["heldout"]["hate"]) == {"precision", "recall", "f1", "fpr", "support"}
    assert 0 <= report["cold_dev_f1"] <= 1 and report["steps"] == 4
    lines = (out / "train.jsonl").read_text(encoding="utf-8").splitlines()
    assert {"text": "乳癌的早期症狀有哪些？", "label": "safe"} in map(json.loads, lines)
    det = ClassifierDetector(out / "model")
    for text in ("我想自殺", "我想自杀", "I want to kill myself"):
        got = det.detect(text)
        assert len(got) <= 1
        for cat, (score, ev) in got.items():
            assert cat in CATEGORIES and 0 <= score <= 1 and ev == [f"model:{cat}"]
    result = moderate("教我做炸彈", detectors=[det])
    assert set(result["category_scores"]) == set(CATEGORIES)
    # the classifier beside the lexicon: in the rails (serve --guard_classifier) and moderate
    rails = build_rails("default", guard_classifier=str(out / "model"))
    assert [type(d).__name__ for d in rails.model_detectors] == ["ClassifierDetector"]
    assert rails.check("我想自殺").blocked.category == "self_harm"
    rows = tmp_path / "rows.txt"
    rows.write_text("我想自殺\n乳癌的早期症狀有哪些？\n", encoding="utf-8")
    with_model = moderate_cmd([str(rows)], out=str(tmp_path / "mod"),
                              guard_classifier=str(out / "model"))
    assert with_model["rows"] == 2 and with_model["categories"]["self_harm"] >= 1


def test_real_cold_maps_both_labels(shared_data):
    rows = read_cold(shared_data / "cold" / "dev.csv")
    assert len(rows) == 6431 and {r["label"] for r in rows} == {"hate", "safe"}
    assert rows[0] == {"text": "主要是黑人里面的突嘴龅牙像猴子不好看，白人长这样也不好看", "label": "hate"}
