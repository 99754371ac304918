"""QA and generation metrics: CMRC 2018's EM and F1 against hand computations of its script,
ROUGE-L by hand, BLEU and chrF equal to sacrebleu's, SQuAD-style files (planted, malformed,
and the real DRCD and CMRC 2018 dev sets), and the closed-book hallucination rate."""

import json

import pytest

from jielong.errors import UserError
from jielong.eval.metrics import (
    cmrc_segments,
    corpus_bleu,
    corpus_chrf,
    corpus_rouge_l,
    exact_match,
    qa_f1,
    rouge_l,
)
from jielong.eval.qa import closed_book, is_refusal, qa_scores, read_squad

sacrebleu = pytest.importorskip("sacrebleu")


def test_exact_match_as_cmrc():
    assert exact_match("北京大学", ["北京大學", "北京大学"]) == 1.0  # the best gold answer
    assert exact_match(" 《北京大学》。", "北京大学") == 1.0  # its punctuation list goes
    assert exact_match("Hello World", "hello world") == 1.0  # lower-cased
    assert exact_match("北京 大学", "北京大学") == 0.0  # spaces inside count
    assert exact_match("OK.", "ok") == 0.0  # ASCII "." is not on its list
    assert exact_match("", "北京") == 0.0


@pytest.mark.parametrize("pred, gold, f1", [
    ("北京大学的校长", "北京大学", 2 * (4 / 7) * 1 / (4 / 7 + 1)),  # characters: 4 of 7 and 4 of 4
    ("光荣和ω-force公司", "光荣和ω-force", 2 * (4 / 6) / (4 / 6 + 1)),  # "-" dropped: ωforce is one word
    ("the Eiffel Tower in Paris", "Eiffel Tower", 2 * (2 / 5) / (2 / 5 + 1)),  # English words
    ("北x京", "北京", 2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2)),  # the common run is contiguous: 1
    ("北京", ["上海", "北京市"], 2 * 1 * (2 / 3) / (1 + 2 / 3)),  # the best of several answers
    ("“北京”", "北京", 1.0),  # Chinese quotes are on its list
    ("Paris, France", "Paris France", 2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2)),  # "," is a word
    ("", "北京", 0.0),
    ("上海", "北京", 0.0),
])
def test_f1_as_cmrc(pred, gold, f1):
    assert qa_f1(pred, gold) == pytest.approx(f1)


def test_cmrc_segmentation():
    assert cmrc_segments("你好，World!", remove_punctuation=False) == ["你", "好", "，", "world", "!"]
    assert cmrc_segments("你好，World!") == ["你", "好", "world", "!"]
    assert cmrc_segments("《三体》 by Liu Cixin") == ["三", "体", "by", "liu", "cixin"]
    with pytest.raises(ValueError, match="no gold"):
        qa_f1("x", [])


@pytest.mark.parametrize("hyp, ref, f", [
    ("今天天氣很好", "今天天氣不好", 5 / 6),  # characters; LCS 今天天氣好
    ("今天，天氣很好！", "今天天氣不好", 5 / 6),  # punctuation dropped
    ("the cat sat on the mat", "The cat is on the mat.", 5 / 6),  # words, lower-cased
    ("police killed the gunman", "police kill the gunman", 3 / 4),  # a subsequence, not a run
    ("我用Python寫程式", "我用python写程序", 4 / 6),  # mixed: 我 用 python 程
    ("a b", "a b c d", 2 * 1 * 0.5 / 1.5),
    ("", "a", 0.0),
])
def test_rouge_l_by_hand(hyp, ref, f):
    assert rouge_l(hyp, ref) == pytest.approx(f)


def test_corpus_rouge_l():
    assert corpus_rouge_l(["今天天氣很好", "a b"], ["今天天氣不好", "a b c d"]) == pytest.approx(
        100 * (5 / 6 + 2 / 3) / 2)
    with pytest.raises(ValueError):
        corpus_rouge_l(["a"], [])


ZH_HYP = ["今天天气很好，我们去河边散步。", "阿明住在龙乡，他养了一只猫。", "书店里有很多书。"]
ZH_REF = ["今天天气不错，我们去河边走走。", "阿明住在龙乡，他养了一条狗。", "书店里有许多书。"]
EN_HYP = ["The cat sat on the mat near the river.", "Mei lives in Maple town."]
EN_REF = ["The cat is sitting on the mat by the river.", "Mei lives in the town of Maple."]


def test_bleu_and_chrf_are_sacrebleus():
    assert corpus_bleu(ZH_HYP, ZH_REF) == sacrebleu.corpus_bleu(ZH_HYP, [ZH_REF], tokenize="zh").score
    assert corpus_bleu(ZH_HYP, ZH_REF) != sacrebleu.corpus_bleu(ZH_HYP, [ZH_REF], tokenize="13a").score
    assert corpus_bleu(EN_HYP, EN_REF) == sacrebleu.corpus_bleu(EN_HYP, [EN_REF], tokenize="13a").score
    for h, r in ((ZH_HYP, ZH_REF), (EN_HYP, EN_REF)):
        assert corpus_chrf(h, r) == sacrebleu.corpus_chrf(h, [r]).score
        assert 0 < corpus_bleu(h, r) < 100 and 0 < corpus_chrf(h, r) < 100
        assert corpus_bleu(r, r) == pytest.approx(100) and corpus_chrf(r, r) == pytest.approx(100)


def squad(tmp_path, obj, name="qa.json"):
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False), encoding="utf-8")
    return path


def planted(tmp_path):
    return squad(tmp_path, {"data": [{"title": "城市", "paragraphs": [{
        "context": "北京大学位于北京。上海是港口城市。",
        "qas": [{"id": "q1", "question": "北京大学在哪里？", "answers": [{"text": "北京", "answer_start": 6}]},
                {"id": "q2", "question": "哪个城市是港口？",
                 "answers": [{"text": "上海", "answer_start": 9}, {"text": "上海市", "answer_start": 9}]},
                {"id": 3, "question": "Which?", "answers": [{"text": "Shanghai", "answer_start": 0}]}]}]}]})


def test_read_squad_and_score(tmp_path):
    items = read_squad(planted(tmp_path))
    assert [i.id for i in items] == ["q1", "q2", "3"] and items[1].answers == ["上海", "上海市"]
    assert items[0].title == "城市" and items[0].context.startswith("北京大学") and items[1].answer_starts == [9, 9]
    s = qa_scores(items, {"q1": "北京。", "q2": "上海港"})
    assert (s.total, s.skipped) == (3, 1)
    assert s.em == pytest.approx(100 / 3)
    assert s.f1 == pytest.approx(100 * (1 + 2 * (2 / 3) * 1 / (2 / 3 + 1)) / 3)  # 上海港 vs 上海


@pytest.mark.parametrize("obj, message", [
    ('{"data": [', r"qa.json:1: not valid JSON"),
    ({"version": 1}, r"qa.json: top level: no 'data' field"),
    ({"data": [{"paragraphs": {}}]}, r"data\[0\].paragraphs: expected list, got dict"),
    ({"data": [{"paragraphs": [{"qas": []}]}]}, r"data\[0\].paragraphs\[0\]: no 'context' field"),
    ({"data": [{"paragraphs": [{"context": "c", "qas": [
        {"id": "a", "question": "?", "answers": [{"text": "c", "answer_start": 0}]},
        {"id": "b", "answers": [{"text": "c", "answer_start": 0}]}]}]}]},
     r"data\[0\].paragraphs\[0\].qas\[1\]: no 'question' field"),
    ({"data": [{"paragraphs": [{"context": "c", "qas": [
        {"id": "a", "question": "?", "answers": [{"text": "c", "answer_start": "0"}]}]}]}]},
     r"qas\[0\].answers\[0\].answer_start: expected int, got str"),
    ({"data": [{"paragraphs": [{"context": "c", "qas": [
        {"id": "a", "question": "?", "answers": []}]}]}]}, r"qas\[0\].answers: empty"),
    ({"data": [{"paragraphs": [{"context": "c", "qas": [
        {"id": "a", "question": "?", "answers": [{"text": "c", "answer_start": 0}]},
        {"id": "a", "question": "?", "answers": [{"text": "c", "answer_start": 0}]}]}]}]},
     r"qas\[1\].id: question id 'a' appears twice"),
    ({"data": []}, r"no questions"),
])
def test_malformed_squad_files_are_one_line_errors(tmp_path, obj, message):
    with pytest.raises(UserError, match=message) as e:
        read_squad(squad(tmp_path, obj))
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="no such file"):
        read_squad(tmp_path / "missing.json")


@pytest.mark.parametrize("name, questions", [("drcd-dev.json", 3524), ("cmrc2018-dev.json", 3219)])
def test_real_squad_files(shared_data, name, questions):
    if not (shared_data / name).is_file():
        pytest.skip(f"{name} is not in ../shared/data")
    items = read_squad(shared_data / name)
    assert len(items) == questions
    gold = qa_scores(items, {i.id: i.answers[0] for i in items})
    assert (gold.em, gold.f1, gold.skipped) == (100.0, 100.0, 0)
    empty = qa_scores(items, {i.id: "" for i in items})
    assert (empty.em, empty.f1) == (0.0, 0.0)


def test_refusals_and_the_hallucination_rate():
    assert is_refusal("我不知道。") and is_refusal("抱歉，我無法回答這個問題")
    assert is_refusal("I DON’T KNOW, sorry") and is_refusal("I'm not   sure.")
    assert not is_refusal("巴黎") and not is_refusal("It is Paris.")
    replies = ["法國的首都是巴黎。", "我不確定。", "是倫敦。", "I don't know.", "It is Canberra.",
               "可能是悉尼，但我不确定"]
    answers = ["巴黎", "東京", ["北京", "北平"], "Paris", ["Canberra"], "堪培拉"]
    r = closed_book(replies, answers)
    assert (r.n, r.correct, r.refused, r.wrong) == (6, 2, 3, 1)
    assert (r.accuracy, r.refusal_rate, r.hallucination_rate) == (2 / 6, 3 / 6, 1 / 6)
    with pytest.raises(ValueError):
        closed_book(["a"], [])
