"""The harmful-content step (`jielong.prep.harmful`): the lexicon in English, Traditional and
Simplified Chinese with its allow-list, a custom lexicon, and a tiny classifier trained by
`jielong train classify`."""

import json
import random

import pytest
import torch
from test_data_clean import (
    ALLOWED,
    HARMFUL,
    doc,
    reasons,
    run_step,
)

from jielong.checkpoint import save_model
from jielong.config import preset
from jielong.errors import UserError
from jielong.model import Transformer
from jielong.prep.harmful import HarmfulFilter, Lexicon
from jielong.tokenizer import train_tokenizer
from jielong.train.classify import classify
from jielong.train.loop import TrainConfig


def test_harmful_lexicon_drops_planted_text_and_keeps_allow_listed_words():
    f = HarmfulFilter()
    got = reasons(f, {k: v[0] for k, v in HARMFUL.items()})
    assert got == {k: v[1] for k, v in HARMFUL.items()}
    docs = [doc(t, k) for k, (t, _) in HARMFUL.items()] + [doc(t, k) for k, t in ALLOWED.items()]
    kept, dropped = run_step(f, docs)
    assert sorted(dropped) == sorted(HARMFUL)
    assert [d.metadata.get("harmful") for d in kept] == [None, None, None, {"violence": ["massacre*"]}]
    # One term, however dense, decides nothing alone.
    assert f.filter(doc("Massacre! massacre, massacre.")) is True
    assert f.stats["dropped_harmful_sexual"].total == 3 and f.stats["forwarded"].total == 4


def test_lexicon_matching_details():
    lex = Lexicon.load()
    assert set(lex.terms) == {"sexual", "violence", "hate", "self_harm", "illegal", "minors"}
    assert set(HarmfulFilter().lexicon.terms) == {"sexual", "violence", "hate", "self_harm"}
    # Terms are found in either script and named as written in the file.
    assert lex.hits("做爱")["sexual"] == {"做愛": 1}
    assert lex.hits("做愛")["sexual"] == {"做愛": 1}
    # English needs word boundaries; spaces/hyphens are flexible; * takes endings.
    assert lex.hits("Essex, Sussex, scunthorpe, therapist") == {}
    assert lex.hits("BLOW-JOB blowjob Blow Job")["sexual"] == {"blow job": 3}
    assert lex.hits("masturbating")["sexual"] == {"masturbat*": 1}
    # The allow-list is what keeps 出口交易 (export trade) from counting as 口交.
    assert Lexicon({"sexual": ["口交"]}, []).hits("出口交易") == {"sexual": {"口交": 1}}
    assert Lexicon({"sexual": ["口交"]}, ["出口交"]).hits("出口交易") == {}
    assert lex.hits("出口交易；口交")["sexual"] == {"口交": 1}
    # "…" is a short gap inside one sentence, in either script and in English; the evidence
    # names the term as written.
    gap = Lexicon({"self_harm": ["安眠藥…吞", "overdose on…pills"]}, [])
    assert gap.hits("我把安眠药都存起来了，打算今晚全部吞下去") == {"self_harm": {"安眠藥…吞": 1}}
    assert gap.hits("安眠藥放在桌上。晚餐後吞了一顆維他命") == {}  # another sentence
    assert gap.hits("I plan to overdose on my sleeping pills") == {"self_harm": {"overdose on…pills": 1}}
    assert gap.hits("overdose on the many different kinds of pills") == {}  # more than GAP_WORDS
    assert lex.find("我想跳樓")[0][:2] == ("self_harm", "想跳樓")
    # Full-width Latin letters are folded (NFKC) before matching.
    assert lex.hits("ＰＯＲＮ")["sexual"] == {"porn*": 1}
    # Only the selected categories.
    only = HarmfulFilter(categories=["hate"])
    assert only.filter(doc(HARMFUL["en_sexual"][0])) is True
    with pytest.raises(UserError, match="not in the lexicon"):
        HarmfulFilter(categories=["spam"])


def test_custom_lexicon_directory(tmp_path):
    (tmp_path / "spam.txt").write_text("# spam\nclick here\n免費領取\n", encoding="utf-8")
    (tmp_path / "allow.txt").write_text("click here to unsubscribe\n", encoding="utf-8")
    f = HarmfulFilter(lexicon_dir=str(tmp_path), min_terms=2)
    assert f.filter(doc("Click here! 免费领取大奖！")) == (False, "harmful_spam")
    assert f.filter(doc("To stop these mails, click here to unsubscribe. Thanks for reading.")) is True


def test_harmful_classifier_from_jielong_train_classify(tmp_path):

    # Threats no lexicon term covers: only the classifier can catch them.
    bad = ["we will hurt them badly", "burn their houses down", "讓他們付出血的代價",
           "让他们付出血的代价", "break every bone they have"]
    good = ["the garden is lovely today", "今天天氣很好", "今天天气很好", "the river is calm",
            "我們去公園散步"]
    tok = train_tokenizer((bad + good) * 3, vocab_size=300)
    cfg = preset("test", vocab_size=tok.vocab_size, eos_token_id=tok.eos_id, pad_token_id=tok.eos_id)
    torch.manual_seed(0)
    base = save_model(tmp_path / "base", Transformer(cfg), tok)
    rows = [{"text": t, "label": "violence"} for t in bad] + [{"text": t, "label": "safe"} for t in good]
    random.Random(0).shuffle(rows)
    data = tmp_path / "harm.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    train = TrainConfig(steps=30, batch_size=8, lr=3e-3, warmup_steps=2, eval_every=1000,
                        save_every=1000, device="cpu", seed=0)
    classify(str(data), model=str(base), out=str(tmp_path / "run"), val_fraction=0, max_len=32,
             train=train)
    f = HarmfulFilter(classifier=str(tmp_path / "run" / "model"), threshold=0.5)
    docs = [doc(t, f"b{i}") for i, t in enumerate(bad)] + [doc(t, f"g{i}") for i, t in enumerate(good)]
    kept, dropped = run_step(f, docs)
    assert sorted(dropped) == [f"b{i}" for i in range(5)]
    assert f.stats["dropped_harmful_violence"].total == 5
    assert all(d.metadata["harmful_score"] < 0.5 for d in kept)
    assert "harmful" not in docs[0].metadata  # the lexicon saw nothing: the classifier decided
    with pytest.raises(UserError, match="not a classifier directory"):
        HarmfulFilter(classifier=str(tmp_path / "nowhere"))
    # A classifier without a safe class cannot be read as a harm score.
    labels = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    labels["id2label"] = {"0": "spam", "1": "violence"}
    (tmp_path / "run" / "model" / "config.json").write_text(json.dumps(labels))
    with pytest.raises(UserError, match="exactly one must name the safe class"):
        HarmfulFilter(classifier=str(tmp_path / "run" / "model")).filter(doc("hello"))
