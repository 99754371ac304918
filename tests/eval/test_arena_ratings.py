"""`jielong eval arena` (jielong.eval.arena): Bradley-Terry ratings from arena votes, checked by
hand, against simulated votes of known strengths, and against the logistic regression of
Chatbot Arena's notebook; the command on a real chat database (votes.jsonl in the fixed
format, a DPO file `jielong train dpo` reads) and its one-line errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from jielong import cli
from jielong.data.preferences import read_pairs
from jielong.eval.arena import FIELDS, arena_cmd, arena_results, ratings, read_votes
from jielong.serve.store import Store

TRUE = {"w": 1200.0, "x": 1100.0, "y": 1000.0, "z": 900.0}  # mean 1050: the fit's mean is 1000


def vote(a, b, winner):
    return {"model_a": a, "model_b": b, "winner": winner}


def simulate(true: dict[str, float], n: int, tie: float, seed: int) -> list[dict]:
    """Votes whose expected score (ties half) is Bradley-Terry's probability on the Elo scale;
    a share `tie` of them ties (half of those as both_bad), random pairs and sides."""
    rng = np.random.default_rng(seed)
    names = list(true)
    out = []
    for _ in range(n):
        i, j = rng.choice(len(names), 2, replace=False)
        a, b = names[i], names[j]
        p = 1 / (1 + 10 ** ((true[b] - true[a]) / 400))
        u = rng.random()
        w = "a" if u < p - tie / 2 else "tie" if u < p + tie / 2 else "b"
        if w == "tie" and rng.random() < 0.5:
            w = "both_bad"
        out.append(vote(a, b, w))
    return out


def test_two_models_by_hand():
    # 3 wins to 1: odds 3, so 400 * log10(3) = 190.85 points apart, around 1000
    r = ratings([vote("A", "B", "a")] * 2 + [vote("B", "A", "b"), vote("B", "A", "a")])
    assert r["A"] - r["B"] == pytest.approx(400 * math.log10(3), abs=0.5)
    assert (r["A"] + r["B"]) / 2 == pytest.approx(1000)
    # two ties are one win each: equal
    r = ratings([vote("A", "B", "tie"), vote("A", "B", "both_bad"), vote("B", "A", "a"),
                 vote("A", "B", "a")])
    assert r["A"] == pytest.approx(r["B"], abs=1e-6)
    # a model that never lost is rated highest, and finitely
    r = ratings([vote("A", "B", "a"), vote("B", "A", "b"), vote("C", "B", "tie")])
    assert r["A"] > r["B"] and r["A"] > r["C"] and max(r.values()) < 3000


def test_recovers_known_strengths_from_simulated_votes():
    votes = simulate(TRUE, 3000, tie=0.2, seed=0)
    result = arena_results(votes, rounds=500, seed=0)
    shift = 1000 - np.mean(list(TRUE.values()))
    got = {r["model"]: r for r in result["ratings"]}
    assert [r["model"] for r in result["ratings"]] == ["w", "x", "y", "z"]
    for m, truth in TRUE.items():
        assert got[m]["rating"] == pytest.approx(truth + shift, abs=20), (m, got[m])
        lo, hi = got[m]["ci"]
        assert lo <= truth + shift <= hi, (m, got[m])
        assert 5 < hi - lo < 60  # an interval of the right size, not a wide net
    assert result["votes"] == 3000 and sum(result["winners"].values()) == 3000
    wr = result["win_rate"]
    assert wr["models"][0] == "w" and wr["rate"][0][0] is None
    # w against z: 300 points apart, so w scores 1 / (1 + 10^-0.75) = 0.849 of the battles
    assert wr["rate"][0][3] == pytest.approx(0.849, abs=0.04)
    assert wr["rate"][3][0] == pytest.approx(1 - wr["rate"][0][3])


def test_matches_the_notebooks_logistic_regression():
    """Chatbot Arena's notebook (compute_mle_elo): sklearn's unpenalised (C=inf) logistic
    regression on rows (+ln10 for A, -ln10 for B), each pair's wins weighted 2 and ties 1
    each way."""
    lm = pytest.importorskip("sklearn.linear_model")
    votes = simulate(TRUE, 600, tie=0.3, seed=1)
    models = list(TRUE)
    idx = {m: i for i, m in enumerate(models)}
    wins = np.zeros((4, 4))
    for v in votes:
        a, b = idx[v["model_a"]], idx[v["model_b"]]
        if v["winner"] == "a":
            wins[a, b] += 2
        elif v["winner"] == "b":
            wins[b, a] += 2
        else:
            wins[a, b] += 1
            wins[b, a] += 1
    X, y, w = [], [], []
    for a in range(4):
        for b in range(4):
            if a != b:
                row = np.zeros(4)
                row[a], row[b] = math.log(10), -math.log(10)
                X += [row, row]
                y += [1, 0]
                w += [wins[a, b], wins[b, a]]
    fit = lm.LogisticRegression(fit_intercept=False, C=np.inf, tol=1e-8, max_iter=1000)
    fit.fit(np.array(X), np.array(y), sample_weight=np.array(w))
    theirs = 400 * fit.coef_[0]
    ours = ratings(votes, models)
    for m in models:
        assert ours[m] - 1000 == pytest.approx(theirs[idx[m]] - theirs.mean(), abs=0.5)


def arena_db(path, votes: list[tuple[str, str, str, str, str]]) -> Store:
    """A chat database with one battle per (model A, model B, answer A, answer B, winner)."""
    store = Store(path)
    for k, (ma, mb, ta, tb, winner) in enumerate(votes):
        c = store.create_conversation(system_prompt="請用繁體中文回答。" if k % 2 else None)
        q = store.add_message(c["id"], None, "user", f"問題 {k}：今天天气怎么样？ weather?")
        a = store.add_message(c["id"], q["id"], "assistant", ta, model=ma, finish_reason="stop")
        b = store.add_message(c["id"], q["id"], "assistant", tb, model=mb, finish_reason="stop")
        battle = store.add_battle(c["id"], q["id"], a["id"], b["id"])
        if winner:
            store.vote(battle["id"], winner)
    return store


def test_the_command_writes_ratings_votes_and_dpo_pairs(tmp_path, capsys):
    rows = [("base", "zh", "晴天。", "今天是晴天，氣溫二十度。", "b"),
            ("zh", "base", "晴。", "Sunny.", "a"),
            ("zh", "pirate", "天气很好。", "Arr, sunny!", "tie"),
            ("pirate", "base", "Arr!", "Cloudy.", "both_bad"),
            ("base", "pirate", "Rain.", "Arr, rain!", "a"),
            ("pirate", "zh", "", "下雨。", "b"),  # a blank answer: no DPO pair
            ("base", "zh", "same", "same", "a"),  # equal answers: no DPO pair
            ("zh", "base", "未投票", "not voted", None)]  # no vote: left out
    store = arena_db(tmp_path / "feedback.db", rows)
    first = store.battles(store.list_conversations()[-1]["id"])[0]
    store.vote(first["id"], "tie")  # a change of mind: the tie is current
    store.vote(first["id"], "b")
    store.close()
    out, dpo = tmp_path / "arena", tmp_path / "prefs.jsonl"
    result = arena_cmd(str(tmp_path / "feedback.db"), str(out), str(dpo), rounds=100)
    assert result["votes"] == 7 and result["winners"] == {"a": 3, "b": 2, "tie": 1, "both_bad": 1}
    assert {r["model"] for r in result["ratings"]} == {"base", "zh", "pirate"}
    assert result["ratings"][0]["model"] == "zh"  # won all its decided battles
    for name in ("results.json", "report.md", "ratings.png", "votes.jsonl"):
        assert (out / name).stat().st_size > 100
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "| 1 | zh |" in report and "95% CI" in report and "Win rate" in report
    assert json.loads((out / "results.json").read_text())["ratings"] == result["ratings"]

    votes = read_votes(out / "votes.jsonl")  # the fixed format, readable back
    assert len(votes) == 7 and all(list(v) == list(FIELDS) for v in votes)
    v0 = votes[0]
    assert (v0["model_a"], v0["model_b"], v0["answer_b"], v0["winner"]) == \
        ("base", "zh", "今天是晴天，氣溫二十度。", "b")
    assert v0["prompt"] == [{"role": "user", "content": "問題 0：今天天气怎么样？ weather?"}]
    assert votes[1]["prompt"][0] == {"role": "system", "content": "請用繁體中文回答。"}
    assert isinstance(v0["time"], float)

    pairs = read_pairs(dpo)  # what `jielong train dpo` reads
    assert len(pairs) == 3 == result["dpo"]
    assert pairs[0].prompt == [{"role": "user", "content": "問題 0：今天天气怎么样？ weather?"}]
    assert (pairs[0].chosen, pairs[0].rejected) == (
        [{"role": "assistant", "content": "今天是晴天，氣溫二十度。"}],
        [{"role": "assistant", "content": "晴天。"}])
    assert [p.chosen[0]["content"] for p in pairs[1:]] == ["晴。", "Rain."]

    # the same ratings from the written votes.jsonl
    again = arena_cmd(out=str(tmp_path / "again"), votes=str(out / "votes.jsonl"), rounds=100)
    assert again["ratings"] == result["ratings"]
    assert "arena:" in capsys.readouterr().out


def error_line(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    out = str(tmp_path / "out")
    err = error_line(["eval", "arena", "--db", str(tmp_path / "nope.db"), "--out", out], capsys)
    assert "nope.db" in err and "no such feedback database" in err
    arena_db(tmp_path / "empty.db", [("a", "b", "x", "y", None)]).close()
    err = error_line(["eval", "arena", "--db", str(tmp_path / "empty.db"), "--out", out], capsys)
    assert "no arena votes yet" in err and "--adapter NAME=DIR" in err
    bad = tmp_path / "votes.jsonl"
    good = {"id": "1", "prompt": [{"role": "user", "content": "hi"}], "model_a": "m",
            "model_b": "m", "answer_a": "x", "answer_b": "y", "winner": "a", "time": 1.0}
    bad.write_text(json.dumps(good) + "\n", encoding="utf-8")
    err = error_line(["eval", "arena", "--votes", str(bad), "--out", out], capsys)
    assert "votes.jsonl:1" in err and "two different model names" in err
    bad.write_text(json.dumps({**good, "model_b": "n", "winner": "B"}) + "\n", encoding="utf-8")
    err = error_line(["eval", "arena", "--votes", str(bad), "--out", out], capsys)
    assert "votes.jsonl:1" in err and "'B'" in err
    bad.write_text(json.dumps({**good, "model_b": "n"}) + "\n", encoding="utf-8")
    err = error_line(["eval", "arena", "--votes", str(bad), "--out", out, "--rounds", "5"], capsys)
    assert "--rounds 5" in err
    with pytest.raises(Exception, match="two or more models"):
        arena_results([vote("m", "m", "a")])
