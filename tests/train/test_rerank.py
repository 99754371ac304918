"""`jielong train rerank` on a toy 繁/简/English set: a new head starts at chance (loss ln 4 for
one positive among four), the loss falls, held-out ranking improves, the folder reads back."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from retrieval_pairs import toy_pairs
from tiny_encoder import make_bert_dir

from jielong.rag.rerank import Reranker
from jielong.train.loop import TrainConfig
from jielong.train.pairs import Passage
from jielong.train.rerank import negatives_for, train_rerank


def test_train_rerank_on_a_toy_set(tmp_path, capsys):
    rows = toy_pairs(16)
    for i, r in enumerate(rows):  # articles of four passages: the hard negatives' groups
        r["group"] = f"g{i // 8}"
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    base = make_bert_dir(tmp_path / "bert", [r["query"] + r["passage"] for r in rows])
    torch.set_num_threads(1)
    r = train_rerank(str(data), model=str(base), out=str(tmp_path / "run"), val_fraction=0.25, negatives=3, max_len=40,
                     train=TrainConfig(steps=60, batch_size=8, lr=3e-3, warmup_steps=5, eval_every=60,
                                       save_every=1000, device="cpu"))
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert np.mean(losses[:5]) == pytest.approx(np.log(4), abs=0.05)  # 1 positive among 4, a new head
    assert np.mean(losses[-10:]) < 0.8 * np.log(4)
    assert r["after"]["val_loss"] < r["before"]["val_loss"] and r["after"]["mrr"] > r["before"]["mrr"]
    # a random BERT's [CLS] hardly varies across pairs: the trainer says so (it still learns this toy set)
    assert "note: the start's [CLS] state hardly varies" in capsys.readouterr().out
    model = Reranker.load(tmp_path / "run" / "model")
    assert model.max_length == 40  # the window it was trained with, not the encoder's 128 positions
    assert len(model.score("where does alice live?", ["alice lives in oslo.", "書"])) == 2



def test_negatives_prefer_the_same_article_and_never_the_positive():
    import random
    ps = [Passage(f"p{i}", "a" if i < 2 else "b", ["q"], "") for i in range(5)]
    groups = {"a": [0, 1], "b": [2, 3, 4]}
    rng = random.Random(0)
    assert negatives_for(0, [0, 2, 3], ps, groups, 2, True, rng) == [1, 2]  # sibling first, then the batch's next
    assert negatives_for(0, [0, 2, 3], ps, groups, 2, False, rng) == [2, 3]
    assert 0 not in negatives_for(0, [0, 0], ps, groups, 3, False, rng)  # a short batch: random others
