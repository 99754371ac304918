"""The demo end to end at a tiny size, through the CLI as `make demo` runs it: every step
runs, the stages that can teach something in so few steps do (with margins well inside what
a run gives: the numbers are in the comments), and the report says what happened and how
long it took."""

import json
import math

from jielong.cli import run as cli
from jielong.eval.command import eval_cmd
from jielong.serve.feedback import export

CMMLU = [("1+1=?", "1", "2", "3", "4", "B"), ("龍鄉在哪裡？", "北", "南", "東", "西", "C"),
         ("阿明的宠物是什么？", "猫", "狗", "鹅", "鱼", "A")]


def cmmlu_dev(folder):
    """CMMLU's dev layout (one CSV a subject, an index column first), two subjects."""
    folder.mkdir()
    for name, rows in (("agronomy", CMMLU[:2]), ("anatomy", CMMLU[2:])):
        (folder / f"{name}.csv").write_text(",Question,A,B,C,D,Answer\n" + "".join(
            f"{i},{','.join(r)}\n" for i, r in enumerate(rows)), encoding="utf-8")
    return folder


def test_demo_runs_and_reports(tmp_path, capsys):
    run = tmp_path / "demo"
    cmmlu = cmmlu_dev(tmp_path / "cmmlu-dev")
    r = cli(["demo", "--out", str(run), "--steps", "40", "--preset", "test", "--vocab_size", "400",
             "--seq_len", "64", "--batch_size", "8", "--docs", "600", "--finetune_steps", "60",
             "--device", "cpu", "--cmmlu", str(cmmlu)])
    assert r["after"]["val_loss"] < r["before"]["val_loss"] - 1.0
    assert 0.0 < r["after"]["chance"] < 0.2
    assert set(r["after"]["by_lang"]) == {"en", "zh-Hant", "zh-Hans", "math"}
    report = (run / "report.md").read_text(encoding="utf-8")
    assert "| validation loss" in report and "![loss curve](loss.png)" in report
    assert "阿明" in report or "小華" in report  # the Chinese prompts and their continuations
    assert json.loads((run / "results.json").read_text())["steps"] == 40
    assert (run / "loss.png").exists() and (run / "model" / "tokenizer.json").exists()
    for line in (run / "corpus" / "train.jsonl").read_text(encoding="utf-8").splitlines()[:5]:
        assert json.loads(line)["text"]
    assert "report:" in capsys.readouterr().out
    # How long each stage took, in the report and in results.json.
    stages = [t["stage"] for t in r["stages"]]
    assert [s.split(".")[0] for s in stages] == [str(i) for i in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)]
    assert all(t["seconds"] >= 0 and t["cpu_seconds"] >= 0 for t in r["stages"])
    assert "## Time" in report and "minutes in all" in report and "| 10. DPO |" in report
    # Look inside: the views' numbers, their pictures and a measured line under each.
    lk = r["look"]
    top = [p for _, p in lk["next"]["top"]]
    assert top == sorted(top, reverse=True) and 0 < sum(top) <= 1.0001 and len(lk["next"]["greedy"]) == 8
    a = lk["attention"]
    assert a["token"] == "她" and set(a["people"][0]) == {"小美", "阿鳳"} and len(a["people"]) == 2
    assert all(0 <= w <= 1 for layer in a["people"] for w in layer.values())
    for word in ("蘋果", "apple"):  # one token sequence, so one vector, until context mixes in
        e = lk["embeddings"][word]
        assert e["same_sense"][0] > 0.9999 and e["fruit_phone"][0] > 0.9999 and len(e["same_sense"]) == 3
    assert len(lk["lens"]["last_position"]) == 3 and 0 <= lk["lens"]["answer_from_layer"] <= 2
    ng = lk["ngram"]["models"]
    assert set(ng) == {"char 3-gram", "token 3-gram", "transformer"}
    assert all(0 < m["bits_per_byte"] < 8 and m["sample"].startswith("阿明") for m in ng.values())
    assert len(lk["sweep"]["runs"]) == 6 and lk["sweep"]["steps"] == [2, 4] and "law" in lk["sweep"]["fit"]
    for png in (f"layer{a['layer']}.png", "rollout.png", "pca.png", "lens.png", "bits_per_byte.png", "sweep.png"):
        assert (run / "look" / png).stat().st_size > 1000 and f"(look/{png})" in report
    assert "## Look inside" in report and "「她」 gives 阿鳳 (the receiver)" in report
    assert "At the embedding layer every 「蘋果」 is one vector" in report
    # Every finetuning stage ran, saved what it made and reported its numbers.
    f = r["finetune"]
    assert set(f) == {"sft", "lora", "classify", "distill", "align", "chat"}
    # Before → after, at this size (one run: spam F1 0.27 → 0.97, reward-model pairwise
    # accuracy 0.31 → 0.75, SFT replies that stop 0% → 19%, translation chrF 0.4 → 2.2).
    spam = f["classify"]
    assert spam["after"]["macro"]["f1"] >= max(0.8, spam["before"]["macro"]["f1"] + 0.3)
    rm = f["align"]["reward"]
    assert rm["accuracy"] >= rm["before"] + 0.2
    # RLHF at this size (24 steps of a 2-layer model) moves the greedy replies by chance: the
    # reward-model score against SFT's changed by +2.8, 0.0 and -3.6 for --docs 600, 620 and
    # 580 of the same code. The full demo shows the lesson; here it ran, moved, and reported.
    rl = f["align"]["rlhf"]
    assert 0 < rl["kl_to_sft"] < 1 and 0 <= rl["win_rate_reward_model"] <= 1
    assert all(math.isfinite(rl[k]) for k in ("reward", "sft_reward", "reward_first", "reward_last"))
    assert f["sft"]["after"]["stop_rate"] >= f["sft"]["before"]["stop_rate"] + 0.05
    assert f["lora"]["after"]["chrf"] >= f["lora"]["before"]["chrf"] + 0.5
    assert 0 < f["align"]["dpo"]["kl_to_sft"] < 1  # DPO moved the policy, not far
    assert (run / "dpo" / "adapter" / "adapter_config.json").exists() and (run / "rlhf" / "rl.png").exists()
    assert set(f["align"]["math"]["after"]) == {"practised", "pool", "test"}
    assert "## Alignment" in report and "### Reward model" in report
    assert f["distill"]["distilled"]["params"] < f["distill"]["teacher"]["params"]
    for section in ("### SFT", "### LoRA", "### Classification", "### Distillation"):
        assert section in report
    assert (run / "lora" / "adapter" / "adapter_config.json").exists()
    assert (run / "spam" / "model" / "config.json").exists() and (run / "confusion.png").exists()
    assert (run / "student-distilled" / "model" / "model.safetensors").exists()
    # The assistant to chat with, and feedback that exports as DPO pairs (the edited answer).
    assert (run / "assistant" / "model.safetensors").exists() and "## Chat" in report
    export(run / "feedback.db", "dpo", run / "dpo.jsonl")
    assert len((run / "dpo.jsonl").read_text().splitlines()) >= f["chat"]["edits"] >= 1
    # The report card: base, SFT and aligned on the same items, each number what the stage
    # that made the model measured (world questions) or what `jielong eval` gives (CMMLU).
    card = r["evaluation"]["card"]
    qa, bpb, cm = card["scores"]
    assert [e["value"] for e in qa["runs"][:2]] == [f["sft"]["before"]["accuracy"], f["sft"]["after"]["accuracy"]]
    assert qa["n"] == f["sft"]["n_test"] and bpb["n"] == 30 and cm["n"] == 3
    alone = eval_cmd(str(run / "model"), tasks=str(cmmlu), shots=0, out=str(tmp_path / "e"), device="cpu")
    assert cm["runs"][0]["value"] == alone["tasks"]["cmmlu-dev"]["acc"]
    assert "## Evaluation" in report and "| world questions answered | " in report
    assert "CMMLU dev accuracy (0-shot) | 3 |" in report and (run / "eval" / "compare.png").exists()
    # Overfitting: the early-stopped run is the first run cut short, holding its best step.
    of = r["evaluation"]["overfit"]
    little = [json.loads(x) for x in (run / "overfit" / "little" / "metrics.jsonl").read_text().splitlines()]
    val = {x["step"]: x["val_loss"] for x in little if "val_loss" in x}
    assert of["early"]["best_val"] == min(v for s, v in val.items() if s <= of["early"]["steps"])
    assert of["early"]["best_val"] == val[of["early"]["best_step"]]
    assert of["varied"]["val_last"] < of["little"]["val_last"]  # more data: lower held-out loss
    assert "![overfitting](overfit/overfit.png)" in report and (run / "overfit" / "overfit.png").exists()
    # The guardrail: with and without the rails, before and after the safety SFT.
    g = r["guardrail"]
    assert set(g["before"]) == set(g["after"]) == {"without", "with"}
    assert g["after"]["with"]["self_harm_right_lines"] > 0  # the input rail's crisis replies
    assert "## Guardrail" in report and (run / "guardrail" / "model" / "model.safetensors").exists()
    # Retrieval: the gate declines what no document covers, with documents only.
    rv = r["retrieval"]
    assert rv["rag"]["none_declined"] > 0 == rv["closed"]["declined"] and rv["rag"]["found"] > 0.5
    assert "## Retrieval" in report and (run / "retrieval" / "index" / "manifest.json").exists()
    # Tools: the held-out sums closed-book and through the calculator loop, measured and reported.
    t = r["tools"]
    assert t["n"]["sums"] > 50 and 0 <= t["before"]["right"] <= 1 and t["after"]["called"] is not None
    assert set(t["after"]["by_lang"]) == {"en", "zh-Hant", "zh-Hans"}
    assert "## Tools" in report and (run / "tools" / "model" / "model.safetensors").exists()
    # Running again starts over cleanly instead of refusing or mixing runs; this time with the
    # demo preset and settings that `make demo` uses, for a few steps.
    r = cli(["demo", "--out", str(run), "--steps", "2", "--docs", "300", "--finetune_steps", "0"])
    assert json.loads((run / "results.json").read_text())["steps"] == 2
    assert r["params"] > 500_000 and r["vocab"] > 400 and not (run / "sft").exists()
