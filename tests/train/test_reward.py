"""Reward model: the Bradley–Terry loss by hand, parity with transformers' sequence
classifiers (num_labels=1), a tiny model that learns a planted preference for polite replies
in English and Chinese, and `jielong score`."""

import json
import math
import random
import shutil

import pytest
import torch
from conftest import bot, run_cli, user, write_jsonl

from jielong.checkpoint import save_model
from jielong.classifier import (
    Classifier,
    encode_scored,
    load_reward,
    pad_batch,
    reward_scores,
    save_classifier,
)
from jielong.config import preset
from jielong.data.preferences import read_pairs
from jielong.errors import UserError
from jielong.model import Transformer
from jielong.tokenizer import train_tokenizer
from jielong.train.common import split_by_prompt
from jielong.train.loop import TrainConfig
from jielong.train.reward import RewardStage, bradley_terry_loss, encode_pairs, reward

# A planted preference: a polite request (please / 請 / 请) beats a curt one.
EN = ["close the door", "send me the report", "call me back", "open the window", "wait a moment",
      "sit down", "turn off the light", "pass the salt", "check the oven", "feed the cat"]
HANT = ["關上門", "把報告寄給我", "回電話給我", "打開窗戶", "等一下", "坐下", "關燈", "把鹽遞給我",
        "看看烤箱", "餵貓"]
HANS = ["关上门", "把报告寄给我", "回电话给我", "打开窗户", "等一下", "坐下", "关灯", "把盐递给我",
        "看看烤箱", "喂猫"]


def polite_pairs(seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for x in EN:
        for ask in (f"Ask me to {x}.", f"Tell me to {x}."):
            rows.append({"prompt": ask,
                         "chosen": rng.choice([f"Please {x}.", f"Could you please {x}?",
                                               f"{x.capitalize()}, please."]),
                         "rejected": rng.choice([f"Now {x}!", f"Just {x}.", f"{x.capitalize()}, now."])})
    for things, asks, polite, curt in (
            (HANT, ["叫我{x}。", "要我{x}。"], ["請{x}。", "請你{x}，謝謝。"], ["快{x}！", "馬上{x}。", "{x}！"]),
            (HANS, ["叫我{x}。", "让我{x}。"], ["请{x}。", "请你{x}，谢谢。"], ["快{x}！", "马上{x}。", "{x}！"])):
        for x in things:
            for ask in asks:
                rows.append({"prompt": [{"role": "user", "content": ask.format(x=x)}],
                             "chosen": rng.choice(polite).format(x=x),
                             "rejected": rng.choice(curt).format(x=x)})
    rng.shuffle(rows)
    return rows


@pytest.fixture(scope="module")
def tok():
    texts = [f"{r['chosen']} {r['rejected']} {json.dumps(r['prompt'], ensure_ascii=False)}"
             for r in polite_pairs()]
    return train_tokenizer(texts * 3, vocab_size=300)


def tiny_reward_model(tok, model_type: str = "llama") -> Classifier:
    cfg = preset("test", vocab_size=tok.vocab_size, model_type=model_type,
                 eos_token_id=tok.eos_id, pad_token_id=tok.eos_id)
    torch.manual_seed(0)
    rm = Classifier(cfg, ["reward"])
    with torch.no_grad():  # weights far from their init, norms and biases included
        for p in rm.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return rm.eval()


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


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_scores_match_transformers_with_one_label(tok, tmp_path, model_type):
    transformers = pytest.importorskip("transformers")
    rm = tiny_reward_model(tok, model_type)
    d = save_classifier(tmp_path / "rm", rm, tok)
    config = json.loads((d / "config.json").read_text())
    assert config["num_labels"] == 1 and config["id2label"] == {"0": "reward"}
    assert config["problem_type"] == "regression"
    convs = [[user("今天天氣如何？"), bot("請帶傘，會下雨。")],
             [user("Ask me to sit down."), bot("Please sit down.")],
             [{"role": "system", "content": "简短回答。"}, user("叫我关灯。"), bot("快关灯！"),
              user("再说一次"), bot("请关灯。")]]
    ids = [encode_scored(tok, c[:-1], c[-1:]) for c in convs]
    x = pad_batch(ids, tok.eos_id)
    mask = (torch.arange(x.shape[1])[None] < torch.tensor([len(s) for s in ids])[:, None]).long()
    for kwargs in ({}, {"num_labels": 1}):
        ref = transformers.AutoModelForSequenceClassification.from_pretrained(
            d, dtype=torch.float32, **kwargs).eval()
        assert ref.config.num_labels == 1 and ref.score.weight.shape[0] == 1
        with torch.no_grad():
            theirs = ref(input_ids=x, attention_mask=mask).logits[:, 0]
        ours = torch.tensor(reward_scores(rm, tok, convs, batch_size=2))
        assert ours.abs().max() > 0.1 and ours.std() > 1e-3  # not trivially small or equal
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    back, tok2 = load_reward(d)
    assert torch.tensor(reward_scores(back, tok2, convs)).allclose(ours, atol=1e-6)


def test_load_reward_and_reward_scores_reject_wrong_input(tok, tmp_path):
    cfg = preset("test", vocab_size=tok.vocab_size, eos_token_id=tok.eos_id, pad_token_id=tok.eos_id)
    d = save_classifier(tmp_path / "clf", Classifier(cfg, ["neg", "pos", "mixed"]), tok)
    with pytest.raises(UserError, match=r"clf: a classifier with 3 classes \(neg, pos, mixed\), not a reward model"):
        load_reward(d)
    with pytest.raises(UserError, match="is this a causal LM"):
        load_reward(save_model(tmp_path / "lm", Transformer(cfg), tok))
    rm = tiny_reward_model(tok)
    with pytest.raises(UserError, match=r"conversation 1: must end with the assistant reply"):
        reward_scores(rm, tok, [[user("q"), bot("a")], [user("q")]])
    assert reward_scores(rm, tok, []) == []


@pytest.fixture(scope="module")
def trained(tok, tmp_path_factory):
    """A tiny reward model trained on the polite-request preference: (run dir, summary, data)."""
    d = tmp_path_factory.mktemp("reward")
    cfg = preset("test", vocab_size=tok.vocab_size, eos_token_id=tok.eos_id, pad_token_id=tok.eos_id)
    torch.manual_seed(0)
    base = save_model(d / "base", Transformer(cfg), tok)
    data = write_jsonl(d / "polite.jsonl", polite_pairs())
    train = TrainConfig(steps=20, batch_size=8, lr=3e-3, warmup_steps=4, eval_every=10, save_every=10,
                        device="cpu", seed=0)
    summary = reward([str(data)], model=str(base), out=str(d / "run"), val_fraction=0.25, train=train)
    return {"dir": d, "base": base, "data": data, "run": d / "run", "train": train, "summary": summary}


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


def one_line_error(r, *needles):
    err = r.stderr.strip()
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


def test_score_command(trained, tmp_path):
    model = str(trained["run"] / "model")
    rows = [{"prompt": "Ask me to wash the dishes.", "chosen": "Please wash the dishes.",
             "rejected": "Just wash the dishes."},
            {"prompt": "叫我洗碗。", "response": "請洗碗。"},
            {"prompt": "让我洗碗。", "completion": "马上洗碗。", "label": "👎"},
            {"prompt": "叫我關燈。", "responses": ["請關燈。", "快關燈！"]}]
    data = write_jsonl(tmp_path / "score.jsonl", rows)
    r = run_cli("score", "--reward", model, "--data", str(data), "--json", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    out = [json.loads(x) for x in r.stdout.splitlines()]
    assert [o["where"] for o in out] == [f"{data}:{i}" for i in (1, 2, 3, 4)]
    assert out[0]["agrees"] and out[0]["margin"] == pytest.approx(out[0]["chosen"] - out[0]["rejected"])
    assert set(out[1]) == {"where", "score"} and out[2]["label"] is False
    assert len(out[3]["scores"]) == 2 and out[3]["agrees"]
    r = run_cli("score", "--reward", model, "--data", str(data), "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert "請洗碗。" in r.stdout and "👎" in r.stdout and " ✓" in r.stdout
    assert "the model agrees with 2 of 2 preferences (100.0%)" in r.stdout
    r = run_cli("score", "--reward", model, "--prompt", "叫我關燈。", "--response", "請關燈。", "--json",
                "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert set(json.loads(r.stdout)) == {"score"}
    bad = write_jsonl(tmp_path / "bad.jsonl", [rows[1], {"prompt": "q", "chosen": "a", "rejected": "a"}])
    one_line_error(run_cli("score", "--reward", model, "--data", str(bad)),
                   "bad.jsonl:2: chosen and rejected are the same reply")
