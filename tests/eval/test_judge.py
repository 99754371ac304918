"""`jielong eval judge`: verdict parsing, the both-orders rule on fake judges, agreement with
planted votes counted by hand, the prompt in three scripts, a local judge (log-likelihood and
generation) on a tiny model, and bad input as one line and exit 2."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_corpus, write_jsonl

from jielong.checkpoint import save_model
from jielong.cli import main, run
from jielong.config import preset
from jielong.eval.judge import (
    Pair,
    db_votes,
    judge_pairs,
    pair_answers,
    pair_rows,
    read_votes,
    report_md,
)
from jielong.eval.judges import Reply, render
from jielong.eval.loglikelihood import encode_pair
from jielong.eval.verdicts import (
    agreement,
    both_orders,
    judge_prompt,
    parse_verdict,
    pick_lang,
    tally,
)
from jielong.hub import open_model
from jielong.model import Transformer
from jielong.serve.store import Store
from jielong.tokenizer import train_tokenizer


@pytest.mark.parametrize("text, want", [
    ("[[A]]", "A"),
    ("Assistant B is more accurate.\n[[B]]", "B"),
    ("At first [[A]] seemed right, but on reflection: [[C]]", "C"),  # the last verdict wins
    ("最終裁決：［［Ａ］］", "A"),  # full-width brackets and letter
    ("verdict: [[ b ]]", "B"),
    ("[[Tie]]", "C"),
    ("Assistant A is better.", None),
    ("[A] or [[D]]", None),
    ("", None),
    (None, None),
])
def test_parse_verdict(text, want):
    assert parse_verdict(text) == want


def test_both_orders_rule():
    assert both_orders("a", "a") == ("a", "a")
    assert both_orders("tie", "tie") == ("tie", "tie")
    assert both_orders("a", "b") == ("tie", "tie")  # position bias: inconsistent
    assert both_orders("a", "tie") == ("tie", "a")  # MT-Bench: a tie; lenient: a win
    assert both_orders("tie", "b") == ("tie", "b")
    assert both_orders(None, "a") == (None, None)


PAIRS = [  # (answer a, answer b): a longer in 3, b longer in 1, equal in 1
    ("Paris is the capital of France.", "Paris."),
    ("台北是台灣最大的城市之一。", "台北。"),
    ("北京是中国的首都，也是文化中心。", "北京。"),
    ("Four.", "Two plus two is four."),
    ("Yes.", "Yep."),
]
QUESTIONS = ["What is the capital of France?", "台北在哪裡？", "中国的首都是哪里？", "2+2?",
             "Is water wet?"]


def pairs() -> list[Pair]:
    return [Pair(str(i), [{"role": "user", "content": q}], a, b, "long", "short")
            for i, (q, (a, b)) in enumerate(zip(QUESTIONS, PAIRS, strict=True))]


def fake(pick):
    """A judge that answers each prompt with pick(first answer, second answer)."""
    def judge(prompts, done):
        out = []
        for p in prompts:
            out.append(Reply(text=pick(p.first, p.second)))
            done()
        return out
    return judge


def run_fake(pick):
    ps = pairs()
    judgments = judge_pairs(ps, fake(pick), "auto", verdict_only=False)
    return judgments, pair_rows(ps, judgments)


def test_a_judge_that_always_says_a_ties_every_pair():
    judgments, rows = run_fake(lambda first, second: "[[A]]")
    assert len(judgments) == 2 * len(PAIRS)
    assert [j["order"] for j in judgments[:2]] == ["ab", "ba"]
    assert judgments[1]["shown_first"] == "short"  # the second order shows b first
    assert [r["orders"] for r in rows] == [["a", "b"]] * len(PAIRS)
    t = tally(rows, samples=200)
    assert (t["a"], t["tie"], t["b"], t["no_verdict"]) == (0, 5, 0, 0)
    assert t["consistency"] == 0 and t["first_position_share"] == 1
    assert t["win_rate_a"] == 0 and t["win_rate_a_ci"] == (0, 0) and t["score_a"] == 0.5


def test_a_judge_that_prefers_the_longer_answer_is_consistent():
    def longer(first, second):
        return "[[A]]" if len(first) > len(second) else "[[B]]" if len(second) > len(first) \
            else "The two are alike. [[C]]"
    _, rows = run_fake(longer)
    assert [r["outcome"] for r in rows] == ["a", "a", "a", "b", "tie"]
    t = tally(rows, samples=500)
    assert (t["a"], t["tie"], t["b"], t["judged"]) == (3, 1, 1, 5)
    assert t["consistency"] == 1 and t["first_position_share"] == 0.5
    assert t["win_rate_a"] == pytest.approx(0.6) and t["score_a"] == pytest.approx(0.7)
    lo, hi = t["win_rate_a_ci"]
    assert 0 <= lo < 0.6 < hi <= 1


def test_no_verdict_is_counted_not_a_crash():
    _, rows = run_fake(lambda first, second: "Both answers have merit." if "?" not in first
                       else "[[A]]")
    t = tally(rows, samples=200)
    assert t["no_verdict"] == 5 and t["judged"] == 0 and t["verdicts_missing"] == 10
    assert "win_rate_a" not in t
    md = report_md({"judge": "fake", "verdict": "generate", "lang": "auto", "pairs": t,
                    "model_a": "long", "model_b": "short"})
    assert "| 5 | 0 | 0 | 0 | 5 | – |" in md


def test_agreement_with_planted_votes_by_hand():
    humans = ["a", "a", "b", "tie", "both_bad", "b", "tie"]
    judged = ["a", "b", "b", "tie", "a", None, "a"]
    ag = agreement(humans, judged, samples=200)
    # with tie: votes 0,1,2,3,6 (both_bad and no verdict left out), agreeing 0,2,3
    assert ag["with_tie"]["n"] == 5 and ag["with_tie"]["agree"] == 3
    assert ag["with_tie"]["rate"] == pytest.approx(0.6)
    # without tie: also leave out 3 (tie, tie) and 6 (tie, a): votes 0,1,2, agreeing 0,2
    assert ag["without_tie"]["n"] == 3 and ag["without_tie"]["rate"] == pytest.approx(2 / 3)
    assert (ag["votes"], ag["both_bad"], ag["no_verdict"]) == (7, 1, 1)
    c = ag["confusion"]
    assert c["a"] == {"a": 1, "b": 1, "tie": 0, "none": 0}
    assert c["b"] == {"a": 0, "b": 1, "tie": 0, "none": 1}
    assert c["tie"] == {"a": 1, "b": 0, "tie": 1, "none": 0}
    assert c["both_bad"] == {"a": 1, "b": 0, "tie": 0, "none": 0}


def test_the_prompt_in_three_scripts_and_with_a_conversation():
    en = judge_prompt([{"role": "user", "content": "What is 2+2?"}], "Four.", "Five.")
    hant = judge_prompt([{"role": "user", "content": "這個問題的答案是什麼？"}], "甲", "乙")
    hans = judge_prompt([{"role": "user", "content": "这个问题的答案是什么？"}], "甲", "乙")
    assert en.messages[0]["content"].startswith("You are an impartial judge")
    assert hant.messages[0]["content"].startswith("你是一位公正的評審")
    assert hans.messages[0]["content"].startswith("你是一位公正的评审")
    assert judge_prompt([{"role": "user", "content": "What is 2+2?"}], "x", "y", "zh-hant") \
        .messages[0]["content"].startswith("你是一位公正的評審")
    assert pick_lang("auto", "台北在哪裡？") == "zh-hant"  # beyond doc_kind's script sets
    assert pick_lang("auto", "你好") == "zh-hans" and pick_lang("zh", "Hi") == "zh-hans"
    user = en.messages[1]["content"]
    assert user.index("What is 2+2?") < user.index("Four.") < user.index("Five.")
    assert "[The start of assistant A's answer]\nFour.\n[The end of assistant A's answer]" in user
    assert en.messages[0]["content"].endswith('"[[C]]" if they are equally good.')
    convo = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
             {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"}]
    user = judge_prompt(convo, "4", "5", verdict_only=True).messages[1]["content"]
    assert user.startswith("[System prompt the assistants were given]\nBe brief.\n\n"
                           "[Conversation before the question]\nUser: Hi\nAssistant: Hello!\n\n"
                           "[User question]\n2+2?")


# ----------------------------------------------------------------------------- a local judge


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("judge")
    tok = train_tokenizer(tiny_corpus(60), vocab_size=300)
    dirs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        net = Transformer(preset("test", vocab_size=tok.vocab_size, max_position_embeddings=2048))
        dirs.append(save_model(root / f"m{seed}", net, tok))
    return root, dirs


def answer_files(root, rows_b=None, n=len(PAIRS)):
    """runs-like answer files root/a/answers.jsonl and root/b/answers.jsonl (b's rows in
    reverse: they pair up by id)."""
    for side in "ab":
        (root / side).mkdir(exist_ok=True)
    rows = [{"id": str(i), "question": q, "answer": x, "other": y}
            for i, (q, (x, y)) in enumerate(zip(QUESTIONS[:n], PAIRS[:n], strict=True))]
    a = write_jsonl(root / "a" / "answers.jsonl",
                    [{k: r[k] for k in ("id", "question", "answer")} for r in rows])
    if rows_b is None:
        rows_b = [{"id": r["id"], "question": r["question"], "answer": r["other"]} for r in rows][::-1]
    return a, write_jsonl(root / "b" / "answers.jsonl", rows_b)


def test_local_judge_by_log_likelihood(tiny, tmp_path):
    root, (m0, _) = tiny
    a, b = answer_files(tmp_path, n=2)
    r = run(["eval", "judge", "--a", str(a), "--b", str(b), "--judge", str(m0), "--out",
             str(tmp_path / "out"), "--samples", "200", "--device", "cpu"])
    t = r["pairs"]
    assert (r["verdict"], r["model_a"], r["model_b"]) == ("logprob", "a", "b")
    assert t["a"] + t["tie"] + t["b"] == t["pairs"] == 2 and t["no_verdict"] == 0
    judgments = [json.loads(x) for x in (tmp_path / "out" / "judgments.jsonl").read_text().splitlines()]
    assert len(judgments) == 4 and all(j["verdict"] in "ABC" for j in judgments)
    # one judgment's log-likelihoods recomputed from a plain forward pass over prompt + verdict
    net, tok, _ = open_model(m0)
    j = judgments[3]
    assert j["messages"][1]["content"].index(PAIRS[1][1]) < \
        j["messages"][1]["content"].index(PAIRS[1][0])  # order ba: b's answer shown first
    text = render(tok, j["messages"], "Verdict: ")
    encoded = [encode_pair(tok, text, f"[[{v}]]") for v in "ABC"]
    assert len({len(ctx + cont) for ctx, cont in encoded}) == 1  # one batch, no padding
    with torch.no_grad():
        logp = F.log_softmax(net(torch.tensor([c + x for c, x in encoded])).float(), -1)
    for row, (v, (ctx, cont)) in enumerate(zip("ABC", encoded, strict=True)):
        want = sum(logp[row, len(ctx) - 1 + k, t].item() for k, t in enumerate(cont))
        assert j["logprobs"][v] == pytest.approx(want, abs=1e-4)
    assert j["verdict"] == max("ABC", key=lambda v: j["logprobs"][v])
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## a (A) vs b (B)" in md and "position consistency" in md


def test_models_answer_and_a_local_judge_writes(tiny, tmp_path):
    root, (m0, m1) = tiny
    q = write_jsonl(tmp_path / "q.jsonl", [{"question": x} for x in QUESTIONS[:2]])
    r = run(["eval", "judge", "--models", str(m0), str(m1), "--questions", str(q), "--judge",
             str(m0), "--verdict", "generate", "--max_tokens", "3", "--answer_tokens", "3",
             "--out", str(tmp_path / "out"), "--samples", "200", "--device", "cpu"])
    t = r["pairs"]
    assert t["a"] + t["tie"] + t["b"] + t["no_verdict"] == t["pairs"] == 2
    answers = [json.loads(x) for x in (tmp_path / "out" / "answers_a.jsonl").read_text().splitlines()]
    assert [x["prompt"][-1]["content"] for x in answers] == QUESTIONS[:2]
    assert all(x["model"] == "m0" for x in answers)
    again = pair_answers(tmp_path / "out" / "answers_a.jsonl", tmp_path / "out" / "answers_b.jsonl")
    assert [(p.model_a, p.model_b, p.conversation[-1]["content"]) for p in again] == \
        [("m0", "m1", x) for x in QUESTIONS[:2]]  # the answers read back as answer files
    judgments = [json.loads(x) for x in (tmp_path / "out" / "judgments.jsonl").read_text().splitlines()]
    assert len(judgments) == 4 and all(isinstance(j["reply"], str) for j in judgments)


# ----------------------------------------------------------------------------- bad input


def fails(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("JUDGE_TEST_KEY", raising=False)
    a, b = answer_files(tmp_path)
    judge = ["--judge", str(tmp_path / "nowhere")]
    assert "no such file" in fails(["eval", "judge", "--a", str(a), "--b", "missing.jsonl", *judge],
                                   capsys)
    short = write_jsonl(tmp_path / "short.jsonl", [{"question": "Hi", "answer": "Hello"}])
    unkeyed = write_jsonl(tmp_path / "unkeyed.jsonl", [{"question": "Hi", "answer": "Yo"}] * 2)
    assert "1 answers" in fails(["eval", "judge", "--a", str(short), "--b", str(unkeyed), *judge],
                                capsys)
    _, b2 = answer_files(tmp_path, [{"id": "0", "question": QUESTIONS[0], "answer": "x"}])
    assert "id '1' has no answer in" in fails(["eval", "judge", "--a", str(a), "--b", str(b2), *judge],
                                              capsys)
    a, b = answer_files(tmp_path)
    vote = {"id": "v1", "prompt": [{"role": "user", "content": "Hi"}], "model_a": "x",
            "model_b": "y", "answer_a": "Hello", "answer_b": "Hey", "winner": "a", "time": 1.0}
    votes = write_jsonl(tmp_path / "votes.jsonl", [vote, {**vote, "winner": "left"}])
    assert f"{votes}:2: winner 'left'" in fails(["eval", "judge", "--votes", str(votes), *judge],
                                                 capsys)
    votes = write_jsonl(tmp_path / "votes.jsonl", [vote, "{not json"])
    assert f"{votes}:2: not valid JSON" in fails(["eval", "judge", "--votes", str(votes), *judge],
                                                 capsys)
    votes = write_jsonl(tmp_path / "votes.jsonl", [{**vote, "prompt": "Hi"}])
    assert f"{votes}:1: prompt must be a list" in fails(
        ["eval", "judge", "--votes", str(votes), *judge], capsys)
    assert "give one judge" in fails(["eval", "judge", "--votes", str(votes)], capsys)
    assert "local judge" in fails(["eval", "judge", "--votes", str(votes), "--judge_url",
                                   "http://127.0.0.1:9/v1", "--verdict", "logprob"], capsys)
    assert "JUDGE_TEST_KEY" in fails(["eval", "judge", "--a", str(a), "--b", str(b), "--judge_url",
                                      "http://127.0.0.1:9/v1", "--api_key_env", "JUDGE_TEST_KEY"],
                                     capsys)


def test_votes_from_the_chat_database_are_the_votes_file(tmp_path):
    """--db reads the arena votes `jielong eval arena` would write to votes.jsonl: the same pairs."""
    with Store(tmp_path / "chat.db") as store:
        c = store.create_conversation(system_prompt="簡短回答。")
        q = store.add_message(c["id"], None, "user", "台灣最高的山是哪一座？")
        a = store.add_message(c["id"], q["id"], "assistant", "玉山。", model="sft", finish_reason="stop")
        b = store.add_message(c["id"], q["id"], "assistant", "不知道", model="base", finish_reason="stop")
        store.vote(store.add_battle(c["id"], q["id"], a["id"], b["id"])["id"], "a")
        votes = store.arena_votes()
    write_jsonl(tmp_path / "votes.jsonl", votes)
    [from_db], [from_file] = db_votes(str(tmp_path / "chat.db")), read_votes(str(tmp_path / "votes.jsonl"))
    assert (from_db.conversation, from_db.answer_a, from_db.model_b, from_db.human) == \
        (from_file.conversation, "玉山。", "base", "a")
    assert from_db.conversation == [{"role": "system", "content": "簡短回答。"},
                                    {"role": "user", "content": "台灣最高的山是哪一座？"}]
