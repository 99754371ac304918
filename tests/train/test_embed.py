"""`jielong train embed`: the pairs it reads (SQuAD JSON and JSONL), the held-out split, recall
by hand, and a tiny random BERT trained on a toy 繁/简/English set — the loss falls, held-out
recall rises, and the saved folder reads back as the same embedder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from retrieval_pairs import toy_pairs
from tiny_encoder import make_bert_dir

from jielong.encoder import Encoder
from jielong.errors import UserError
from jielong.rag.embed import embed_queries, load_embedder
from jielong.train.embed import train_embed
from jielong.train.loop import TrainConfig
from jielong.train.pairs import read_pairs, recall_at, same_passage, split_passages

SQUAD = {"data": [{"title": "龍鄉", "paragraphs": [
    {"context": "阿明住在龍鄉，他養了一隻貓。", "qas": [{"question": "阿明住在哪裡？"}, {"question": "阿明養了什麼？"}]},
    {"context": "龙乡在河边。", "qas": [{"question": "龙乡在哪里？"}]},
    {"context": "No questions here.", "qas": []}]},
    {"title": "Maple", "paragraphs": [{"context": "Mei keeps a goose.", "qas": [{"question": "What does Mei keep?"}]}]}]}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_pairs_from_squad_and_jsonl(tmp_path):
    (tmp_path / "set.json").write_text(json.dumps(SQUAD, ensure_ascii=False), encoding="utf-8")
    ps = read_pairs(tmp_path / "set.json")
    assert [(p.text, p.group, len(p.queries)) for p in ps] == [
        ("阿明住在龍鄉，他養了一隻貓。", "龍鄉", 2), ("龙乡在河边。", "龍鄉", 1), ("Mei keeps a goose.", "Maple", 1)]
    rows = [{"q": "Where?", "p": "Oslo."}, {"q": "哪裡？", "p": "臺北。"}, {"q": "When?", "p": "Oslo."}]
    ps = read_pairs(write_jsonl(tmp_path / "p.jsonl", rows), "q", "p")
    assert [(p.text, p.queries) for p in ps] == [("Oslo.", ["Where?", "When?"]), ("臺北。", ["哪裡？"])]
    with pytest.raises(UserError, match=r"p.jsonl:1: expected \{\"query\""):
        read_pairs(tmp_path / "p.jsonl")
    with pytest.raises(UserError, match="at least two"):
        read_pairs(write_jsonl(tmp_path / "one.jsonl", [{"query": "a", "passage": "b"}]))


def test_split_keeps_passages_whole_and_recall_by_hand():
    from jielong.train.pairs import Passage
    ps = [Passage(f"p{i}", "", [f"q{i}a", f"q{i}b"], "") for i in range(10)]
    train, held = split_passages(ps, 0.3, seed=1)
    assert len(held) == 3 and not {p.text for p in train} & {p.text for p in held}
    scores = np.array([[0.9, 0.1, 0.0], [0.5, 0.4, 0.6], [0.2, 0.3, 0.1], [0.7, 0.7, 0.7]])
    r = recall_at(scores, [0, 1, 2, 0], ks=(1, 2))  # gold ranks 1, 3, 3 and 3 (a tie counts against)
    assert r == {"recall@1": 1 / 4, "recall@2": 1 / 4, "mrr": pytest.approx((1 + 1 / 3 + 1 / 3 + 1 / 3) / 4)}
    assert same_passage([4, 7, 4]).tolist() == [[False, False, True], [False, False, False], [True, False, False]]


def test_train_embed_on_a_toy_set(tmp_path):
    rows = toy_pairs(24)
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    base = make_bert_dir(tmp_path / "bert", [r["query"] + r["passage"] for r in rows] + ["問："])
    torch.set_num_threads(1)
    r = train_embed(str(data), model=str(base), out=str(tmp_path / "run"), val_fraction=0.25,
                    query_prefix="問：", train=TrainConfig(steps=80, batch_size=16, lr=3e-3, warmup_steps=5,
                                                         eval_every=40, save_every=1000, device="cpu"))
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:5])
    before, after = r["before"], r["after"]
    # held-out passages name people never trained on: what generalises is "match the name"
    assert after["val_loss"] < 0.7 * before["val_loss"] and after["mrr"] > before["mrr"] + 0.07
    assert after["recall@1"] > before["recall@1"] and after["recall@5"] > before["recall@5"] + 0.1
    # the folder reads back: Encoder.load (CLS, normalised), and load_embedder with the saved prefix
    enc = Encoder.load(tmp_path / "run" / "model")
    assert (enc.pooling, enc.normalize) == ("cls", True)
    emb = load_embedder(tmp_path / "run" / "model")
    assert emb.query_prefix == "問：" and emb.name.endswith("query=問：")
    q, p = embed_queries(emb, ["alice住在哪裡？"]), emb.embed(["alice lives in oslo."])
    np.testing.assert_allclose(p, enc.embed(["alice lives in oslo."]).numpy(), atol=1e-6)
    assert q.shape == (1, 32)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["held_out_passages"] == 18 and report["after"]["mrr"] == after["mrr"]
