"""Reward model: the Bradley–Terry loss by hand, the stage's batches, the split by prompt, and
a tiny model that learns a planted preference for polite replies in English and Chinese
(parity with transformers' one-label classifiers: tests/test_classifier.py; `jielong score`:
tests/eval/test_scores.py)."""

import json
import math
import shutil

import pytest
import torch
from conftest import bot, user, write_jsonl
from polite_pairs import polite_pairs, polite_tokenizer, tiny_reward_model, train_polite_reward

from jielong.classifier import encode_scored, load_reward, reward_scores
from jielong.data.preferences import read_pairs
from jielong.errors import UserError
from jielong.train.common import split_by_prompt
from jielong.train.loop import TrainConfig
from jielong.train.reward import RewardStage, bradley_terry_loss, encode_pairs, reward


@pytest.fixture(scope="module")
def tok():
    return polite_tokenizer()


def test_bradley_terry_loss_by_hand():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    # −log σ(1) = log(1 + e^−1), −log σ(−1) = log(1 + e)
    by_hand = (math.log(1 + math.exp(-1)) + math.log(1 + math.e)) / 2
    assert bradley_terry_loss(chosen, rejected).item() == pytest.approx(by_hand, abs=1e-6)
    assert by_hand == pytest.approx(0.813262, abs=1e-6)
    # Centring adds c · mean((r_c + r_r)²) = 0.1 · (3² + 1²) / 2.
    assert bradley_terry_loss(chosen, rejected, center=0.1).item() == pytest.approx(by_hand + 0.5, abs=1e-6)
    # Equal rewards: log 2, whatever they are.
    assert bradley_terry_loss(torch.full((3,), 7.0), torch.full((3,), 7.0)).item() == pytest.approx(math.log(2))


def test_stage_batches_pairs_deterministically_and_reads_the_end_of_turn(tok, tmp_path):
    pairs = read_pairs([str(write_jsonl(tmp_path / "p.jsonl", polite_pairs()[:6]))])
    encoded, skipped = encode_pairs(tok, pairs, max_len=256)
    assert skipped == 0 and len(encoded) == 6
    c, r = encoded[0]
    assert c[-1] == tok.im_end_id and r[-1] == tok.im_end_id  # the score's token
    assert c == encode_scored(tok, pairs[0].prompt, pairs[0].chosen)
    cfg = TrainConfig(batch_size=4, seed=3)
    stage = RewardStage(encoded, None, tok.eos_id, cfg)
    b = stage.batch(5, 0, 0)
    assert torch.equal(b["input_ids"], stage.batch(5, 0, 0)["input_ids"])
    assert torch.equal(b["input_ids"], RewardStage(encoded, None, tok.eos_id, cfg).batch(5, 0, 0)["input_ids"])
    assert b["input_ids"].shape[0] == 8  # 4 chosen, then their 4 rejected
    rm = tiny_reward_model(tok)
    loss, n = stage.loss(rm, b)
    scores = rm(b["input_ids"])[:, 0]
    assert loss.item() == pytest.approx(bradley_terry_loss(scores[:4], scores[4:]).item(), abs=1e-6)
    assert n == int(b["lengths"].sum())
    # Too long for max_len: left out and counted.
    assert encode_pairs(tok, pairs, max_len=len(c) - 1)[1] >= 1


def test_split_holds_out_whole_prompts():
    pairs = read_pairs_from_rows([{"prompt": f"q{i % 5}", "chosen": f"a{i}", "rejected": f"b{i}"}
                                  for i in range(20)])
    train, held = split_by_prompt(pairs, 0.2, seed=0)
    assert len(train) + len(held) == 20 and len(held) == 4
    assert not {p.prompt[0]["content"] for p in train} & {p.prompt[0]["content"] for p in held}
    assert split_by_prompt(pairs, 0.2, seed=0) == (train, held)


def read_pairs_from_rows(rows):
    from jielong.data.preferences import parse_pair

    return [parse_pair(r, f"x.jsonl:{i + 1}") for i, r in enumerate(rows)]


@pytest.fixture(scope="module")
def trained(tok, tmp_path_factory):
    """A tiny reward model trained on the polite-request preference: (run dir, summary, data)."""
    return train_polite_reward(tmp_path_factory.mktemp("reward"), tok)


def test_reward_model_learns_a_planted_preference(trained, capsys):
    s, run = trained["summary"], trained["run"]
    assert s["before"]["accuracy"] <= 0.75  # chance, near enough, before training
    assert s["accuracy"] >= 0.9 and s["margin"] > 1.0
    report = json.loads((run / "report.json").read_text())
    assert report["pairs"] == 14 and report["train_pairs"] == 46 and report["accuracy"] == s["accuracy"]
    assert (run / "loss.png").read_bytes()[:4] == b"\x89PNG"
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [m for m in metrics if "accuracy" in m]
    assert [m["step"] for m in evals] == [10, 20] and {"val_loss", "margin"} <= evals[-1].keys()
    # Requests it never saw, in all three scripts: the polite one scores higher.
    rm, tok = load_reward(run)  # a run directory means its model/
    fresh = [("Ask me to wash the dishes.", "Please wash the dishes.", "Just wash the dishes."),
             ("叫我洗碗。", "請洗碗。", "快洗碗！"),
             ("让我洗碗。", "请你洗碗，谢谢。", "马上洗碗。")]
    scores = reward_scores(rm, tok, [[user(q), bot(a)] for q, good, bad in fresh for a in (good, bad)])
    assert all(scores[i] > scores[i + 1] for i in range(0, 6, 2)), scores


def test_reward_run_resumes_exactly(trained):
    run, train = trained["run"], trained["train"]
    ckpts = sorted((run / "checkpoints").iterdir())
    assert [p.name for p in ckpts] == ["step-0000010", "step-0000020"]
    before = (run / "metrics.jsonl").read_text().splitlines()
    shutil.rmtree(ckpts[1])
    again = reward([str(trained["data"])], model=str(trained["base"]), out=str(run), val_fraction=0.25,
                   train=train, resume=True)
    after = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x).get("loss") for x in after] == [json.loads(x).get("loss") for x in before]
    assert again["accuracy"] == trained["summary"]["accuracy"]


def test_reward_command_errors(trained, tmp_path):
    ratings = write_jsonl(tmp_path / "kto.jsonl", [{"prompt": "q", "completion": "a", "label": True}])
    with pytest.raises(UserError, match=r"kto\.jsonl:1: .*for `jielong train kto`"):
        reward([str(ratings)], model=str(trained["base"]), out=str(tmp_path / "r"))
    with pytest.raises(UserError, match=r"--max_len 999 does not fit: the model's context is 256 tokens"):
        reward([str(trained["data"])], model=str(trained["base"]), out=str(tmp_path / "r"), max_len=999)
