"""`jielong rag eval` (jielong.rag.evaluate): the ranking metrics against hand computation,
the faithfulness check on planted answers in 繁/简/English, the command end to end on a tiny
SQuAD-style set (retrieval, cross-script questions, answers with a tiny model, calibration),
and recall on real DRCD paragraphs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import one_thread_tiny_model

from jielong import cli
from jielong.checkpoint import save_model
from jielong.config import preset
from jielong.errors import UserError
from jielong.model import Transformer
from jielong.rag import evaluate
from jielong.rag.chunk import Chunk
from jielong.rag.evaluate import (
    doc_key,
    evaluate_retrieval,
    faithfulness,
    read_set,
    retrieval_metrics,
    support,
)
from jielong.rag.index import Hit, Index, build_index
from jielong.tokenizer import Tokenizer


def test_metrics_on_a_toy_ranking_by_hand():
    rankings = [["d3", "d1", "d2"], ["d1", "d2"], ["x", "y"], ["a", "r1", "b", "r2"]]
    relevant = [{"d1"}, {"d1"}, {"d9"}, {"r1", "r2"}]
    got = retrieval_metrics(rankings, relevant, k=3)
    assert got["recall@1"] == 0.25 and got["recall@3"] == 0.75 and got["recall@5"] == 0.75
    assert got["mrr"] == pytest.approx((1 / 2 + 1 + 0 + 1 / 2) / 4)
    # nDCG@3: rank 2 → 1/log2(3); rank 1 → 1; none → 0; two relevant, one at rank 2 within
    # the cut (r2 at 4 is past it) → (1/log2 3) / (1 + 1/log2 3)
    third = 1 / math.log2(3)
    assert got["ndcg@3"] == pytest.approx((third + 1 + 0 + third / (1 + third)) / 4)
    assert doc_key("data/drcd-dev.json#12") == ("drcd-dev.json", 12) and doc_key("a.txt") == "a.txt"


def hit(n: int, text: str) -> Hit:
    return Hit(Chunk(f"c:{n}", text, f"doc{n}.txt", None, None, 0, len(text)), 1.0, n, "bm25")


PASSAGES = [hit(1, "台北101是台灣最高的建築物，位於信義區。"),
            hit(2, "長城是中國古代的軍事防禦工程，綿延兩萬多公里。"),
            hit(3, "The Eiffel Tower stands in Paris. It was built for the 1889 World's Fair.")]


def test_faithfulness_on_planted_answers():
    # 繁: the gold answer is in the reply, so it is the claim; [1] holds it, [2] does not
    f = faithfulness("台北101位於信義區 [1][2]", PASSAGES, ["信義區"])
    assert f["claim"] == "信義區" and f["cited"] == [1, 2] and f["faithful"] == [1]
    # 简 reply citing the 繁 passage: folded to one script, the span is found
    f = faithfulness("长城绵延两万多公里 [2]", PASSAGES, ["两万多公里"])
    assert f["faithful"] == [2]
    assert support("绵延两万多公里", PASSAGES[1].chunk.text) == 1.0
    # English: a copied sentence is supported, a made-up year is not
    assert faithfulness("It was built for the 1889 World's Fair [3].", PASSAGES, ["1889"])["faithful"] == [3]
    f = faithfulness("The tower was moved to Lyon in 1920 [3].", PASSAGES, ["1889"])
    assert f["claim"].startswith("The tower was moved") and f["faithful"] == []
    assert support("moved to Lyon in 1920", PASSAGES[2].chunk.text) == 0.0
    # the passage's characters in another order are not its claim (bigrams, not characters)
    assert support("區義信於位", PASSAGES[0].chunk.text) == 0.0
    assert faithfulness("信義區", PASSAGES, ["信義區"])["cited"] == []  # no marker, nothing cited


SETS = {
    "mixed.json": [
        ("台北101", "台北101是台灣最高的建築物。它位於信義區，每年跨年都有煙火表演。",
         [("q1", "台北101位於哪一區？", "信義區"), ("q2", "哪裡每年跨年有煙火表演？", "台北101")]),
        ("长城", "长城是中国古代的军事防御工程。它绵延两万多公里，八达岭是最有名的段落。",
         [("q3", "长城绵延多少公里？", "两万多公里"), ("q4", "长城最有名的段落是哪里？", "八达岭")]),
        ("Eiffel", "The Eiffel Tower stands in Paris. It was built for the 1889 World's Fair.",
         [("q5", "For which World's Fair was the Eiffel Tower built?", "1889")]),
        ("茶", "烏龍茶是半發酵的茶，產於福建和台灣的山區。", [("q6", "烏龍茶產於哪裡？", "福建和台灣")]),
    ],
    "other.json": [
        ("量子", "量子计算机利用量子叠加进行运算。", [("o1", "量子计算机利用什么进行运算？", "量子叠加")]),
        ("火山", "富士山是一座活火山。", [("o2", "富士山是什么山？", "活火山")]),
    ],
}


def write_set(path: Path, articles) -> Path:
    data = {"data": [{"title": title, "paragraphs": [{"context": context, "qas": [
        {"id": qid, "question": q, "answers": [{"text": a, "answer_start": context.find(a)}]}
        for qid, q, a in qas]}]} for title, context, qas in articles]}
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def test_rag_eval_command_on_a_tiny_set_in_three_scripts(tmp_path, capsys, monkeypatch):
    data = write_set(tmp_path / "mixed.json", SETS["mixed.json"])
    other = write_set(tmp_path / "other.json", SETS["other.json"])
    got = cli.run(["rag", "eval", str(data), "--out", str(tmp_path / "out")])["retrieval"]
    assert got["questions"] == 6 and got["recall@1"] == 1.0 and got["mrr"] == 1.0
    assert json.loads((tmp_path / "out" / "retrieval.json").read_text())["recall@5"] == 1.0
    assert "recall@1 1.000" in capsys.readouterr().out
    # 简 questions (t2s) and 繁 questions (s2t) find the same paragraphs through the index's folding
    for conv in ("t2s", "s2t"):
        r = cli.run(["rag", "eval", str(data), "--convert", conv, "--index", str(tmp_path / "out" / "index")])
        assert r["retrieval"]["recall@1"] == 1.0 and r["retrieval"]["convert"] == conv
    # whitespace BM25: Chinese questions share no "word" with the paragraphs; the English one still ranks
    ws = cli.run(["rag", "eval", str(data), "--tokenizer", "whitespace"])["retrieval"]
    assert ws["recall@20"] <= 1 / 6 + 1e-9
    # the calibration table: the other set's questions (s2t) are declined at a high threshold
    cal = cli.run(["rag", "eval", str(data), "--calibrate", str(other), "--answer_k", "2"])["calibration"]
    assert [r["threshold"] for r in cal["rows"]] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    assert cal["other_converted"] == "s2t" and cal["rows"][-1]["other_set_declined"] == 1.0
    assert cal["rows"][0]["answerable_kept"] == 1.0 and 0.1 <= cal["pick"] <= 0.9
    # an index without the set's paragraphs: one line
    build_index([other], tmp_path / "other-index")
    with pytest.raises(UserError, match="no passage of mixed.json"):
        cli.run(["rag", "eval", str(data), "--index", str(tmp_path / "other-index")])
    # answers with a (random) tiny model: every field there, declines counted, EM/F1 in range
    with one_thread_tiny_model(tmp_path) as model:
        torch.manual_seed(0)
        tok = Tokenizer.from_dir(model)
        roomy = save_model(tmp_path / "roomy", Transformer(preset(
            "test", vocab_size=tok.vocab_size, max_position_embeddings=2048)), tok)
        out = cli.run(["rag", "eval", str(data), "--model", str(roomy), "--limit", "3", "--max_new_tokens", "4",
                       "--index", str(tmp_path / "out" / "index"), "--out", str(tmp_path / "ans")])["answers"]
    assert out["questions"] == 3 and 0 <= out["em"] <= 100 and 0 <= out["f1"] <= 100
    rows = [json.loads(x) for x in (tmp_path / "ans" / "answers.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["q1", "q2", "q3"]
    assert all(r["declined"] or ("reply" in r and "faithful" in r) for r in rows)
    assert out["decline_rate"] == pytest.approx(sum(r["declined"] for r in rows) / 3 + out["declined_by_model"])

    # planted replies: two faithful citations, one that cites a passage without its claim, one "I don't know"
    def planted(net, tok, prompts, *args):
        said = {"台北101位於哪一區": "信義區 [1]", "长城绵延多少公里": "它有三千公里长 [1]",
                "长城最有名的段落": "八达岭 [1]"}
        return [next((r for q, r in said.items() if q in tok.decode(p)), "我不知道。") for p in prompts], {}

    monkeypatch.setattr(evaluate, "generate_replies", planted)
    out = cli.run(["rag", "eval", str(data), "--model", str(roomy), "--limit", "4", "--answer_k", "1",
                   "--index", str(tmp_path / "out" / "index")])["answers"]
    assert out["declined_by_gate"] == 0 and out["declined_by_model"] == 0.25 and out["em"] == 50.0
    assert out["answers_citing"] == 0.75 and out["citations_faithful"] == pytest.approx(2 / 3)
    assert out["cited_answers_unsupported"] == pytest.approx(1 / 3)


def test_recall_on_the_first_100_drcd_paragraphs(shared_data, tmp_path):
    doc = json.loads((shared_data / "drcd-dev.json").read_text(encoding="utf-8"))
    kept, n = [], 0
    for article in doc["data"]:
        paragraphs = article["paragraphs"][:100 - n]
        if paragraphs:
            kept.append({**article, "paragraphs": paragraphs})
            n += len(paragraphs)
    path = tmp_path / "drcd-100.json"
    path.write_text(json.dumps({"data": kept}, ensure_ascii=False), encoding="utf-8")
    build_index([path], tmp_path / "index", chunk_tokens=4096, overlap=0)
    got = evaluate_retrieval(Index.load(tmp_path / "index"), read_set(path), progress=False)
    assert n == 100 and got["questions"] >= 300 and got["recall@5"] >= 0.9 and got["mrr"] >= 0.8
