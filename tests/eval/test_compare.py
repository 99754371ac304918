"""`jielong eval compare`: paired bootstrap intervals of each run's difference from the first,
on planted runs whose differences are known, and end to end on two `jielong eval --text` runs."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import tiny_corpus

from jielong import cli
from jielong.checkpoint import save_model
from jielong.config import preset
from jielong.errors import UserError
from jielong.eval.compare import bootstrap, compare_runs, verdict
from jielong.model import Transformer
from jielong.tokenizer import train_tokenizer

N = 400


def planted_run(d, correct: list[int], docs: list[tuple[float, int]] | None = None):
    """A folder as `jielong eval` writes it: one task of N questions, right where correct[i]."""
    d.mkdir(parents=True)
    results = {"model": d.name, "tasks": {"cmmlu": {"acc": float(np.mean(correct))}}}
    rows = [{"task": "cmmlu", "where": f"agronomy.csv:{i + 2}", "acc": c, "acc_norm": c}
            for i, c in enumerate(correct)]
    if docs:
        results["text"] = {"files": ["held.jsonl"]}
        rows += [{"task": "text", "document": i, "nll": n, "bytes": b} for i, (n, b) in enumerate(docs)]
    (d / "results.json").write_text(json.dumps(results))
    (d / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(d)


def test_paired_intervals_on_known_differences(tmp_path):
    rng = np.random.default_rng(1)
    base = (rng.random(N) < 0.5).astype(int).tolist()
    same = planted_run(tmp_path / "same", base)
    # 40 of the questions the base got wrong are now right: +0.1, and the pairing sees it
    wrong = [i for i, c in enumerate(base) if not c][:40]
    better = planted_run(tmp_path / "better", [1 if i in wrong else c for i, c in enumerate(base)])
    docs = [(100.0, 80), (50.0, 40), (70.0, 60), (90.0, 70)] * 10
    r = compare_runs([planted_run(tmp_path / "base", base, docs), same, better], samples=2000)
    acc = r["scores"][0]
    assert acc["score"] == "cmmlu acc" and acc["n"] == N
    s, b = acc["runs"][1], acc["runs"][2]
    assert s["diff"] == 0 and s["diff_ci"] == (0.0, 0.0) and verdict(s, True) == "within noise"
    assert b["diff"] == pytest.approx(0.1)
    # a paired difference of +1 on 10% of 400 questions: sd = sqrt(0.1 · 0.9 / 400) = 0.015
    lo, hi = b["diff_ci"]
    assert 0.1 - 2.5 * 0.015 < lo < 0.1 - 1.5 * 0.015 and 0.1 + 1.5 * 0.015 < hi < 0.1 + 2.5 * 0.015
    assert verdict(b, True) == "better"
    # the base's own interval: sd = sqrt(0.25 / 400) = 0.025; an unpaired difference would be
    # √2 wider still, the paired one is narrower than either run's own
    base_lo, base_hi = acc["runs"][0]["ci"]
    assert 3 * 0.025 < base_hi - base_lo < 5 * 0.025 and hi - lo < 0.75 * (base_hi - base_lo)
    assert "held-out bits per byte" not in [row["score"] for row in r["scores"]]  # only one run has text


def test_bits_per_byte_interval_recomputes_the_ratio(tmp_path):
    docs = [(100.0, 80), (50.0, 40), (70.0, 60), (90.0, 70)] * 10
    worse = [(n * 1.1, b) for n, b in docs]
    r = compare_runs([planted_run(tmp_path / "a", [1, 0], docs), planted_run(tmp_path / "b", [1, 0], worse)],
                     samples=500)
    text = r["scores"][-1]
    want = sum(n for n, _ in docs) / math.log(2) / sum(b for _, b in docs)
    assert text["score"] == "held-out bits per byte" and text["runs"][0]["value"] == pytest.approx(want)
    entry = text["runs"][1]
    assert entry["diff"] == pytest.approx(0.1 * want)
    assert entry["diff_ci"][0] > 0 and verdict(entry, False) == "worse"
    draws = bootstrap(lambda x: x.mean(), [np.arange(10.0)], 200, 0)
    assert len(draws) == 200 and 0 <= draws.min() and draws.max() <= 9


def test_compare_two_eval_runs_through_the_cli(tmp_path, capsys):
    tok = train_tokenizer(tiny_corpus(60), vocab_size=300)
    held = tmp_path / "held.jsonl"
    held.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in tiny_corpus(30)),
                    encoding="utf-8")
    runs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = save_model(tmp_path / f"m{seed}", Transformer(preset("test", vocab_size=tok.vocab_size)), tok)
        cli.main(["eval", str(model), "--text", str(held), "--out", str(tmp_path / f"e{seed}"),
                  "--device", "cpu"])
        runs.append(str(tmp_path / f"e{seed}"))
    cli.main(["eval", "compare", *runs, "--out", str(tmp_path / "cmp"), "--samples", "300"])
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    text = result["scores"][0]
    assert text["n"] == 30 and text["runs"][1]["diff"] == pytest.approx(
        text["runs"][1]["value"] - text["runs"][0]["value"])
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 1000
    assert "run 2 − run 1 [95% CI]" in (tmp_path / "cmp" / "compare.md").read_text()
    assert "compare:" in capsys.readouterr().out


def generated_run(d, em: list[int], labels: list[str | None], verdicts: list[str]):
    """A `jielong eval` folder with three generation tasks, as jielong.eval.generation writes them."""
    d.mkdir(parents=True)
    gold = ["spam", "ham", "ham", "spam"] * (len(labels) // 4)
    results = {"model": d.name, "generate": {
        "drcd": {"kind": "squad"}, "classify:sms": {"kind": "classify", "labels": ["ham", "spam"]},
        "closedbook:cb": {"kind": "closedbook"}}}
    rows = [{"task": "drcd", "kind": "squad", "where": f"drcd.json:q{i}", "em": e, "f1": e}
            for i, e in enumerate(em)]
    rows += [{"task": "classify:sms", "kind": "classify", "where": f"sms.jsonl:{i + 1}", "pred": p,
              "label": g, "correct": int(p == g)} for i, (p, g) in enumerate(zip(labels, gold, strict=True))]
    rows += [{"task": "closedbook:cb", "kind": "closedbook", "where": f"cb.jsonl:{i + 1}", "verdict": v}
             for i, v in enumerate(verdicts)]
    (d / "results.json").write_text(json.dumps(results))
    (d / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(d)


def test_generation_tasks_compare_per_answer(tmp_path):
    n = 200
    a = generated_run(tmp_path / "a", [0] * n, ["spam"] * n, ["wrong"] * n)
    b = generated_run(tmp_path / "b", [1] * (n // 2) + [0] * (n // 2),
                      ["spam", "ham", "ham", "spam"] * (n // 4), ["correct", "refused"] * (n // 2))
    rows = {r["score"]: r for r in compare_runs([a, b], samples=300)["scores"]}
    assert set(rows) == {"drcd EM", "drcd F1", "classify:sms accuracy", "classify:sms macro-F1",
                         "closedbook:cb accuracy", "closedbook:cb hallucination rate"}
    em = rows["drcd EM"]["runs"]
    assert (em[0]["value"], em[1]["value"], em[1]["diff"]) == (0, 50, 50)  # on EM's 0-100 scale
    assert verdict(em[1], True) == "better"
    f1 = rows["classify:sms macro-F1"]["runs"]
    # run a says spam always: spam F1 = 2·100/(200+100) = 2/3, ham F1 = 0 → 1/3; run b is perfect
    assert f1[0]["value"] == pytest.approx(1 / 3) and f1[1]["value"] == 1.0
    assert f1[1]["diff_ci"][0] > 0 and rows["classify:sms accuracy"]["runs"][0]["value"] == 0.5
    hall = rows["closedbook:cb hallucination rate"]
    assert hall["higher_is_better"] is False and hall["runs"][1]["diff"] == -1.0
    assert verdict(hall["runs"][1], False) == "better"  # fewer wrong answers


def test_compare_bad_input(tmp_path):
    a = planted_run(tmp_path / "a", [1, 0])
    with pytest.raises(UserError, match="two or more runs"):
        cli.run(["eval", "compare", a])
    with pytest.raises(UserError, match="not a `jielong eval` output folder"):
        cli.run(["eval", "compare", a, str(tmp_path)])
    other = tmp_path / "other"
    other.mkdir()
    (other / "results.json").write_text(json.dumps({"tasks": {"mmlu": {}}}))
    (other / "samples.jsonl").write_text('{"task": "mmlu", "where": "x:1", "acc": 1, "acc_norm": 1}\n')
    with pytest.raises(UserError, match="share no task"):
        cli.run(["eval", "compare", a, str(other)])
    (other / "samples.jsonl").write_text("{not json\n")
    with pytest.raises(UserError, match=r"samples.jsonl:1: not valid JSON"):
        cli.run(["eval", "compare", a, str(other)])
