"""The demo's retrieval stage: its new people and places (really new, written in the world's
characters), the documents and questions, the measures on hand-made replies, and the stage
on a tiny model, where the gate's declines are known."""

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_corpus

from jielong.checkpoint import save_model
from jielong.config import preset
from jielong.demo.retrieval import (
    NEW_PEOPLE,
    NEW_TOWNS,
    UNKNOWN_PEOPLE,
    Question,
    confident_wrong,
    declined,
    new_facts,
    questions,
    retrieval_report,
    retrieval_stage,
    right,
    write_documents,
)
from jielong.demo.world import LANGS, PEOPLE, TOWNS, build_corpus
from jielong.model import Transformer
from jielong.rag.answer import decline_text, retrieve
from jielong.rag.index import Index, build_index
from jielong.tokenizer import train_tokenizer


def test_new_people_and_places():
    old = {t.say(lang) for t in PEOPLE + TOWNS for lang in LANGS}
    new = NEW_PEOPLE + NEW_TOWNS + UNKNOWN_PEOPLE
    assert not old & {t.say(lang) for t in new for lang in LANGS}  # never in the world
    text = "".join(build_corpus(seed=0, n_docs=300).train)
    for t in new:  # every character is the world's: the demo tokenizer has a token for it
        assert all(c in text for c in t.hant + t.hans), t
    facts = new_facts()
    assert len(facts) == 5 * len(NEW_PEOPLE) + len(NEW_TOWNS) and new_facts() == facts
    answerable, none = questions(facts)
    assert len(answerable) == 2 * len(facts) and {q.lang for q in answerable} == set(LANGS)
    assert all(q.value and not q.value.startswith(" ") for q in answerable) and all(not q.value for q in none)


def test_documents_and_retrieval(tmp_path):
    """Each document states its facts; a 简 question finds the 繁 document's person too, a
    question about what no document says is declined by the gate."""
    facts = new_facts()
    paths = write_documents(tmp_path / "docs", facts)
    assert len(paths) == 3 * (len(NEW_PEOPLE) + len(NEW_TOWNS))
    lin = [f for f in facts if f.subject == NEW_PEOPLE[0]]
    text = (tmp_path / "docs" / "lin.zh-Hant.txt").read_text(encoding="utf-8")
    assert all(f.value.hant in text for f in lin) and "阿林" in text
    en = (tmp_path / "docs" / "lin.en.txt").read_text(encoding="utf-8")
    assert all(f.value.en in en for f in lin)
    build_index([tmp_path / "docs"], tmp_path / "index", progress=False)
    index = Index.load(tmp_path / "index")
    hits = retrieve(index, "阿林的宠物是什么？", k=1)
    assert hits and "阿林" in hits[0].chunk.text
    assert retrieve(index, "阿林最好的朋友是誰？", k=1) == []  # 最好, 朋友 in no document


def test_measures_on_known_replies():
    q = Question("阿林住在哪裡？", "zh-Hant", "hometown", "金嶺", "金岭")
    assert right("阿林住在金岭。", q) and not confident_wrong("阿林住在金岭。", q)
    assert confident_wrong("阿林住在楓林。", q) and not right("阿林住在楓林。", q)
    assert not confident_wrong("阿林喜歡貓。", q)  # no town named: wrong, but not a made-up town
    assert declined(decline_text("阿林住在哪裡？")) and not confident_wrong(decline_text("x？"), q)
    e = Question("What pet does Lin have?", "en", "pet", "goose")
    assert right("Lin's pet is a Goose.", e) and confident_wrong("Lin's pet is a cat.", e)
    assert declined("I don’t know.") and not declined("Lin's pet is a cat.")
    nobody = Question("Who is Lin's best friend?", "en", "friend", "")
    assert confident_wrong("Lin's best friend is Mei.", nobody) and not right("Mei", nobody)


def test_stage_on_a_tiny_model(tmp_path):
    """A tiny model with 4-token replies: the questions nobody documented that the gate drops
    are declined with documents and never closed-book; retrieval finds each person's document."""
    run = tmp_path / "run"
    tok = train_tokenizer(tiny_corpus(60), vocab_size=300)
    torch.manual_seed(0)
    model = Transformer(preset("test", vocab_size=tok.vocab_size, max_position_embeddings=2048))
    save_model(run / "assistant", model, tok)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        r = retrieval_stage(run, tok, "cpu", max_new=4)
    finally:
        torch.set_num_threads(before)
    index = Index.load(run / "retrieval" / "index")
    answerable, none = questions(new_facts())
    gated = sum(not retrieve(index, q.text, k=1) for q in none) / len(none)
    assert gated > 0.3
    assert r["closed"]["none_declined"] == 0  # 4 tokens of a random model
    assert r["rag"]["none_declined"] >= gated
    # found: the share of answerable questions whose person's (or town's) document came first
    first = [retrieve(index, q.text, k=1) for q in answerable]
    want = sum(bool(h) and Path(h[0].chunk.source).name.split(".")[0] == q.subject
               for h, q in zip(first, answerable, strict=True)) / len(answerable)
    assert r["rag"]["found"] == want > 0.5
    assert r["n"]["answerable"] == 88 and r["rag"]["too_long"] == 0
    json.dumps(r, ensure_ascii=False)
    report = "\n".join(retrieval_report(r))
    assert "## Retrieval" in report and "| confident wrong answers |" in report


@pytest.mark.parametrize("lang", LANGS)
def test_questions_in_each_language(lang):
    answerable, none = questions(new_facts())
    mine = [q for q in answerable if q.lang == lang]
    assert len(mine) >= 29 and sum(q.lang == lang for q in none) == len(none) // 3
