"""`jielong prompt`: each technique's conversations in Traditional, Simplified Chinese and
English, answers read from the last line, tokens counted as the model reads and writes them,
and the command end to end on a tiny model (its accuracy recomputed from samples.jsonl)."""

from __future__ import annotations

import json

import pytest
import torch

from jielong import cli
from jielong.checkpoint import save_model
from jielong.config import preset
from jielong.demo.world import build_corpus, han_char_pieces
from jielong.eval.prompting import (
    COT,
    CRITIQUE,
    PLAN,
    REVISE,
    Call,
    Generator,
    Item,
    QuestionSet,
    demo_set,
    few_shots,
    named,
    question_sets,
    read_answer,
    run_technique,
    score,
    sub_questions,
)
from jielong.infer.generate import generate_ids
from jielong.infer.sampling import SamplingParams
from jielong.model import Transformer
from jielong.tokenizer import train_tokenizer

QUESTIONS = {"en": ("Which town does Ming's friend live in?", "Maple"),
             "zh-Hant": ("阿明的朋友住在哪個城市？", "楓林"),
             "zh-Hans": ("阿明的朋友住在哪个城市？", "枫林")}
TOWNS = ["Maple", "Willow", "楓林", "柳岸", "枫林"]


def qset() -> QuestionSet:
    items = [Item(q, lang, [a], TOWNS, f"t:{lang}", "friend_hometown") for lang, (q, a) in QUESTIONS.items()]
    pool = [("Where does Mei's friend live?", "Mei's best friend lives in Willow.", "en"),
            ("Where does Hua's friend live?", "Hua's best friend lives in Maple.", "en"),
            ("Which town does Ming's friend live in?", "(the question itself)", "en"),
            ("小美的朋友住在哪個城市？", "小美最好的朋友住在柳岸。", "zh-Hant"),
            ("小美的朋友住在哪个城市？", "小美最好的朋友住在柳岸。", "zh-Hans")]
    return QuestionSet("t", items, pool)


def scripted(replies):
    """A generate() that records every call and answers from `replies(call)`."""
    seen: list[Call] = []

    def generate(calls):
        for c in calls:
            seen.append(c)
            c.reply = replies(c)
            c.prompt_tokens, c.new_tokens = len(json.dumps(c.messages)), len(c.reply)
    return generate, seen


def test_each_technique_speaks_the_questions_language():
    qs = qset()
    for technique in ("zero", "few", "cot", "reflect"):
        gen, seen = scripted(lambda c: "Maple")
        calls = run_technique(gen, qs, technique, k=2)
        assert len(calls) == 3 and all(cs[-1].reply == "Maple" for cs in calls)
        for it, cs in zip(qs.items, calls, strict=True):
            last = cs[-1].messages
            if technique == "zero":
                assert last == [{"role": "user", "content": it.question}]
            if technique == "cot":
                assert last[-1]["content"] == f"{it.question}\n{COT[it.lang]}"
            if technique == "reflect":
                assert [m["content"] for m in last] == [it.question, "Maple", CRITIQUE[it.lang], "Maple",
                                                        REVISE[it.lang]]
    assert "一步一步想" in COT["zh-Hant"] and "一步一步想" in COT["zh-Hans"] and "step by step" in COT["en"]
    assert CRITIQUE["zh-Hant"] != CRITIQUE["zh-Hans"] and "檢查" in CRITIQUE["zh-Hant"] and "检查" in CRITIQUE["zh-Hans"]


def test_few_shot_draws_k_examples_in_the_language_and_never_the_question():
    qs = qset()
    en, hant, hans = qs.items
    shots = few_shots(qs, en, 5)
    assert len(shots) == 2 and all(q != en.question for q, _ in shots)  # the pool's third is the question
    assert few_shots(qs, hant, 2) == [("小美的朋友住在哪個城市？", "小美最好的朋友住在柳岸。")]
    assert few_shots(qs, hans, 2) == [("小美的朋友住在哪个城市？", "小美最好的朋友住在柳岸。")]
    assert few_shots(qs, en, 1) == few_shots(qs, en, 1) and len(few_shots(qs, en, 0)) == 0
    gen, _ = scripted(lambda c: "x")
    calls = run_technique(gen, qs, "few", k=2)
    roles = [m["role"] for m in calls[0][0].messages]
    assert roles == ["user", "assistant", "user", "assistant", "user"]
    own = Item("Q?", "en", ["A"], list("ABCD"), "f:2", letters=True, shots=[("S1", "B"), ("S2", "C")])
    assert few_shots(QuestionSet("b", [own]), own, 1) == [("S1", "B")]  # a benchmark's own dev shots


def test_decomposition_plans_answers_each_sub_question_then_the_whole():
    assert sub_questions("1. Who is Ming's best friend?\n2) Where does Mei live?\n\n- extra\n4. more") == [
        "Who is Ming's best friend?", "Where does Mei live?", "extra"]
    assert sub_questions("第一步：阿明最好的朋友是誰？\n（2）x") == ["阿明最好的朋友是誰？", "（2）x"]
    plans = {"en": "1. Who is Ming's best friend?\n2. Where does Mei live?",
             "zh-Hant": "阿明最好的朋友是誰？\n小美住在哪裡？", "zh-Hans": "阿明最好的朋友是谁？"}

    def replies(c):
        text = c.messages[-1]["content"]
        for lang, plan in plans.items():
            if text == PLAN[lang].format(q=QUESTIONS[lang][0]):
                return plan
        return "Maple" if text.startswith("Which town") else f"ans({text})"

    gen, _ = scripted(replies)
    calls = run_technique(gen, qset(), "decompose")
    en, hant, hans = calls
    assert [len(c) for c in calls] == [4, 4, 3]  # plan, each sub-question, the whole
    assert en[0].messages == [{"role": "user", "content": PLAN["en"].format(q=QUESTIONS["en"][0])}]
    assert en[2].messages == [{"role": "user", "content": "Who is Ming's best friend?"},
                              {"role": "assistant", "content": "ans(Who is Ming's best friend?)"},
                              {"role": "user", "content": "Where does Mei live?"}]
    assert [m["content"] for m in en[3].messages] == [
        "Who is Ming's best friend?", "ans(Who is Ming's best friend?)", "Where does Mei live?",
        "ans(Where does Mei live?)", QUESTIONS["en"][0]]
    assert "拆成" in hant[0].messages[0]["content"] and "簡單" in hant[0].messages[0]["content"]
    assert "简单" in hans[0].messages[0]["content"] and hans[2].messages[-1]["content"] == QUESTIONS["zh-Hans"][0]


def test_the_answer_is_read_from_the_last_line():
    en, hant, hans = qset().items
    steps = "Ming's best friend is Mei.\nMei lives in Willow.\nSo Ming's best friend lives in Maple."
    assert read_answer(en, steps) == "Maple"
    assert read_answer(en, "Maple is near, but Mei lives in Willow.\nThinking…") == "Willow"  # no town: all of it, the last named
    assert read_answer(hant, "阿明最好的朋友是小美。\n小美住在柳岸。\n所以阿明最好的朋友住在楓林。") == "楓林"
    assert read_answer(hans, "<think>柳岸？</think>所以阿明最好的朋友住在枫林。") == "枫林"
    assert read_answer(hans, "我不知道。") is None
    assert named("Bob lives in Maples", ["Bo", "Maple"]) is None  # whole English words only
    assert named("阿明最好的朋友是小美。", ["阿明", "小美"], "阿明最好的朋友是誰？") == "小美"  # not the subject
    mc = Item("Q", "zh-Hans", ["C"], list("ABCD"), "x", letters=True)
    assert read_answer(mc, "A 和 B 都不对。\n答案：C") == "C" and read_answer(mc, "没有") is None


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny untrained model with a tokenizer trained on the demo world's text."""
    torch.set_num_threads(1)
    corpus = build_corpus(seed=0, n_docs=200)
    tok = train_tokenizer(han_char_pieces(corpus.train), vocab_size=400)
    torch.manual_seed(0)
    net = Transformer(preset("test", vocab_size=tok.vocab_size, max_position_embeddings=96))
    return save_model(tmp_path_factory.mktemp("m") / "model", net, tok), net.eval(), tok


def test_tokens_are_counted_as_read_and_written(tiny):
    _, net, tok = tiny
    stops = tok.end_ids
    gen = Generator(net, tok, stops, max_new_tokens=6, batch_size=2)
    msgs = [[{"role": "user", "content": q}] for q, _ in QUESTIONS.values()]
    msgs.append([{"role": "user", "content": "很長的問題" * 40}])  # longer than 96 - 6 tokens: cut
    calls = [Call(m) for m in msgs]
    gen(calls)
    for c in calls:
        ids = tok.encode_chat(c.messages, add_generation_prompt=True)[0]
        assert c.truncated == (len(ids) > 90) and c.prompt_tokens == min(len(ids), 90)
        alone = generate_ids(net, [ids[-90:]], SamplingParams(max_tokens=6, temperature=0.0), stops)[0]
        assert c.new_tokens == len(alone) and c.reply == tok.decode(alone, skip_special_tokens=True).strip()
    assert calls[-1].truncated and not calls[0].truncated
    r, rows = score(QuestionSet("t", qset().items), "x", [[c] for c in calls[:3]])
    assert r["prompt_tokens"] == sum(c.prompt_tokens for c in calls[:3])
    assert r["total_tokens"] == r["prompt_tokens"] + sum(c.new_tokens for c in calls[:3]) == r["tokens_per_question"] * 3


def test_command_end_to_end(tiny, tmp_path):
    model_dir = tiny[0]
    exam = tmp_path / "exam"
    exam.mkdir()
    (exam / "geography.csv").write_text(",Question,A,B,C,D,Answer\n1,龍山在哪裡？,楓林,柳岸,石橋,雲杉,B\n"
                                        "2,玉河在哪里？,枫林,柳岸,石桥,云杉,A\n3,Where is Maple?,north,south,east,west,C\n",
                                        encoding="utf-8")
    out = tmp_path / "out"
    cli.main(["prompt", str(model_dir), "--questions", f"multihop,{exam}", "--limit", "2",
              "--max_new_tokens", "4", "--out", str(out)])
    results = json.loads((out / "results.json").read_text())
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert list(results["sets"]) == ["multihop", "exam"]
    assert list(results["sets"]["multihop"]) == ["zero", "few", "cot", "decompose", "reflect"]
    for name, by in results["sets"].items():
        for t, r in by.items():
            mine = [x for x in rows if x["set"] == name and x["technique"] == t]
            assert r["n"] == len(mine) == 2 and r["accuracy"] == sum(x["correct"] for x in mine) / 2
            assert r["total_tokens"] == sum(c["prompt_tokens"] + c["new_tokens"] for x in mine for c in x["calls"])
    assert {t: results["sets"]["exam"][t]["calls"] for t in ("zero", "few", "cot", "reflect")} == {
        "zero": 2, "few": 2, "cot": 2, "reflect": 6}
    few = next(x for x in rows if x["set"] == "exam" and x["technique"] == "few")
    asked = [m["content"] for m in few["calls"][0]["messages"]]
    assert asked[0].startswith("玉河在哪里？\nA. 枫林") and asked[1] == "A" and asked[3] == "C" and asked[-1].startswith("以下是关于")
    assert "| multihop | reflect | 2 |" in (out / "report.md").read_text()
    with pytest.raises(SystemExit) as e:
        cli.main(["prompt", str(model_dir), "--techniques", "zero,magic", "--out", str(out)])
    assert e.value.code == 2


def test_cmmlu_dev_reads_as_a_question_set(shared_data):
    qs = question_sets(str(shared_data / "cmmlu-dev"), "data", shots=2, limit=3)[0]
    assert qs.name == "cmmlu-dev" and len(qs.items) == 3 * len(list((shared_data / "cmmlu-dev").glob("*.csv")))
    it = qs.items[0]
    assert it.lang == "zh-Hans" and it.letters and it.choices == list("ABCD") and it.question.startswith("以下是关于")
    assert it.question.endswith("请只回答正确选项的字母。") and len(it.shots) == 2
    assert all(q != it.question.split("\n\n", 1)[1] for q, _ in it.shots)  # never the question itself


def test_demo_sets_hold_their_questions_and_pools():
    multihop, single = demo_set("multihop"), demo_set("demo")
    assert len(multihop.items) == 72 and {it.lang for it in multihop.items} == {"en", "zh-Hant", "zh-Hans"}
    assert multihop.items[1].question == "小華的朋友住在哪個城市？" and multihop.items[1].answers == ["松嶺", "松岭"]
    assert "松岭" in multihop.items[1].choices  # either script reads as an answer
    held = {it.question for it in multihop.items}
    assert not held & {q for q, _, _ in multihop.pool}  # held-out questions never in the few-shot pool
    assert {lang for _, _, lang in single.pool} == {"en", "zh-Hant", "zh-Hans"}
    assert all(it.group not in ("add", "sub") for it in single.items)
