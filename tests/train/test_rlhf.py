"""RLHF: the GRPO / PPO math by hand, reward functions, and tiny runs that learn, resume
exactly, train only a LoRA adapter, and fail with one line on a bad reward."""

import json
import math
import shutil

import pytest
import torch
from conftest import run_cli, tiny_corpus

from jielong import rewards
from jielong.checkpoint import base_state_dict, load_model, save_model
from jielong.classifier import Classifier, save_classifier
from jielong.cli import main
from jielong.config import preset
from jielong.errors import UserError
from jielong.infer.sampling import SamplingParams
from jielong.model import Transformer
from jielong.tokenizer import train_tokenizer
from jielong.train import rlhf as rlhf_module
from jielong.train.loop import TrainConfig
from jielong.train.rlhf import (
    RLConfig,
    gae,
    group_advantages,
    grpo_loss,
    k3,
    read_prompts,
    rlhf,
    sample_replies,
)

# Replies rewarded for the share of their characters that are digits: a random tiny model
# writes ~3% digits, and learns to write almost only digits within a dozen steps.
DIGITS = "def digits(prompts, replies, items):\n" \
         "    return [sum(c.isdigit() for c in r) / max(1, len(r)) for r in replies]\n"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("rlhf")
    tok = train_tokenizer(tiny_corpus(200), vocab_size=360)
    torch.manual_seed(0)
    base = save_model(root / "base", Transformer(preset("test", vocab_size=tok.vocab_size)), tok)
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"{i} + {i % 5} = ?", "answer": i + i % 5}) + "\n"
                               for i in range(40)))
    (root / "my_rewards.py").write_text(DIGITS)
    return root, tok, base, prompts


def tiny(steps: int, **kw) -> TrainConfig:
    return TrainConfig(**{"steps": steps, "batch_size": 4, "lr": 1e-2, "warmup_steps": 0,
                          "schedule": "constant", "weight_decay": 0.0, "eval_every": 100,
                          "save_every": 100, "device": "cpu", **kw})


def rows(run) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


# ---- the math, by hand -------------------------------------------------------------------

def test_group_advantages_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0, 0.0, 3.0, 0.0, 1.0])
    a = group_advantages(r, group=4)
    # group 1: mean 0.5, population std 0.5; group 2: all equal, nothing to learn;
    # group 3: mean 1, std sqrt((1 + 4 + 1 + 0) / 4)
    s3 = math.sqrt(1.5)
    expected = [0.5 / 0.5, -1, -1, 1, 0, 0, 0, 0, -1 / s3, 2 / s3, -1 / s3, 0]
    assert torch.allclose(a, torch.tensor(expected), atol=1e-3)
    assert torch.allclose(a.view(3, 4).sum(1), torch.zeros(3), atol=1e-5)
    dr = group_advantages(r, group=4, scale=False)  # Dr. GRPO: no division by the std
    assert dr.tolist() == [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0, -1, 2, -1, 0]


def test_grpo_loss_by_hand():
    ln = math.log
    logp = torch.tensor([ln(0.5), ln(0.25), ln(0.2)], requires_grad=True)
    old = torch.tensor([ln(0.4), ln(0.25), ln(0.4)])
    adv = torch.tensor([1.0, -2.0, -1.0])
    ref = torch.tensor([ln(0.5), ln(0.5), ln(0.2)])
    loss = grpo_loss(logp, old, adv, ref, clip=0.2, beta=0.1)
    # token 1: ratio 1.25 > 1.2 with A > 0 is clipped: −1.2; KL 0 (policy = reference)
    # token 2: ratio 1: −(−2) = 2; KL: d = ln 2, e^d − d − 1 = 1 − ln 2, times β
    # token 3: ratio 0.5 < 0.8 with A < 0: the clipped 0.8·A is the pessimistic one: 0.8
    t1, t2, t3 = -1.2, 2 + 0.1 * (1 - ln(2)), 0.8
    assert loss.item() == pytest.approx((t1 + t2 + t3) / 3, abs=1e-6)
    loss.backward()
    # the clipped tokens get no policy gradient; token 2 gets −A·ratio/M + β·(1 − e^d)/M
    assert logp.grad[0].item() == pytest.approx(0.0, abs=1e-7)
    assert logp.grad[1].item() == pytest.approx((2.0 + 0.1 * (1 - 2)) / 3, abs=1e-6)
    assert logp.grad[2].item() == pytest.approx(0.0, abs=1e-7)
    # on-policy (one step per batch): ratio 1, the gradient is −A/M, the plain policy gradient
    lp = torch.tensor([-1.0, -2.0, -0.5], requires_grad=True)
    grpo_loss(lp, lp.detach(), adv, None, clip=0.2, beta=0.1).backward()
    assert torch.allclose(lp.grad, -adv / 3)
    assert (k3(torch.randn(50), torch.randn(50)) >= 0).all()


def test_gae_by_hand():
    # one prompt token, then a 3-token reply, then padding; the reward at the last token
    mask = torch.tensor([[False, True, True, True, False]])
    r = torch.tensor([[0.0, 0.0, 0.0, 1.0, 0.0]])
    v = torch.tensor([[0.0, 0.5, 0.5, 0.5, 0.0]])
    # λ = 1: advantages are the return (1) minus the value
    assert gae(r, v, mask, lam=1.0).tolist() == [[0, 0.5, 0.5, 0.5, 0]]
    # λ = 0: one-step TD errors r_t + V_{t+1} − V_t (nothing after the last token)
    assert gae(r, v, mask, lam=0.0).tolist() == [[0, 0.0, 0.0, 0.5, 0]]


# ---- rewards and prompts -----------------------------------------------------------------

def test_built_in_rewards():
    items = [{"answer": "12"}, {"answer": 12}, {"reference": "7 + 5 = 12."}, {"answer": "12"}]
    replies = ["7 + 5 = 12.", "答案是 １２。", "12", "7 + 5 = 13, not 12? no: 13"]
    assert rewards.arithmetic([[]] * 4, replies, items) == [1.0, 1.0, 1.0, 0.1]
    assert rewards.arithmetic([[]], ["no idea"], [{"answer": 3}]) == [0.0]
    assert rewards.arithmetic.check({"reference": "no number"})
    user = lambda text: [{"role": "user", "content": text}]  # noqa: E731
    prompts = [user("阿明的寵物是什麼？"), user("阿明的宠物是什么？"), user("What pet?"), user("阿明的寵物是什麼？")]
    assert rewards.script(prompts, ["阿明的寵物是貓。", "阿明的宠物是猫。", "A cat.", "阿明的宠物是猫。"],
                          [{}] * 4) == [1.0, 1.0, 1.0, 0.0]
    assert rewards.length([[]] * 2, ["x" * 50, "x" * 75], [{}, {}]) == [1.0, 0.5]
    assert rewards.concise([[]] * 2, ["", "x" * 100], [{}, {}]) == [0.0, 0.5]


def test_reward_specs(setup):
    root = setup[0]
    assert rewards.load_reward_fn("arithmetic") is rewards.arithmetic
    fn = rewards.load_reward_fn(f"{root / 'my_rewards.py'}:digits")
    assert fn([[]], ["a1"], [{}]) == [0.5]
    assert rewards.load_reward_fn("jielong.rewards:concise") is rewards.concise
    for spec, needle in [("nosuch", "not a reward function"), ("missing.py:f", "no such file"),
                         (f"{root / 'my_rewards.py'}:nope", "no function 'nope'"),
                         ("no_such_module_xyz:f", "cannot import module")]:
        with pytest.raises(UserError, match=needle):
            rewards.load_reward_fn(spec)
    with pytest.raises(UserError, match="returned 1 scores for 2 replies"):
        rewards.checked(lambda p, r, i: [1.0], "f")([[]] * 2, ["a", "b"], [{}] * 2)
    with pytest.raises(UserError, match="finite"):
        rewards.checked(lambda p, r, i: [float("nan")], "f")([[]], ["a"], [{}])


def test_prompt_rows(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(
        json.dumps({"prompt": "2 + 3 = ?", "answer": 5}) + "\n"
        + json.dumps({"prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]}) + "\n"
        + json.dumps({"messages": [{"role": "user", "content": "1 + 1?"},
                                   {"role": "assistant", "content": "1 + 1 = 2."}], "id": 7}) + "\n")
    got = read_prompts([str(path)])
    assert got[0].messages == [{"role": "user", "content": "2 + 3 = ?"}] and got[0].item == {"answer": 5}
    assert [m["role"] for m in got[1].messages] == ["system", "user"]
    assert got[2].messages == [{"role": "user", "content": "1 + 1?"}]
    assert got[2].item == {"id": 7, "reference": "1 + 1 = 2."}
    path.write_text(json.dumps({"prompt": "ok"}) + "\n" + json.dumps({"text": "no prompt"}) + "\n")
    with pytest.raises(UserError, match=r"p.jsonl:2: .*\"prompt\""):
        read_prompts([str(path)])


def test_sampled_replies_keep_the_token_that_ended_them(setup):
    _, tok, base, _ = setup
    model = load_model(base).eval()
    stops = set(range(0, tok.vocab_size, 7))  # many stop tokens, so some replies stop early
    out = sample_replies(model, [[5, 6, 7]] * 16, SamplingParams(max_tokens=6, temperature=1.0, seed=0),
                         stops)
    assert any(st for _, st in out) and not all(st for _, st in out)
    for ids, stopped in out:
        assert all(t not in stops for t in ids[:-1])
        assert stopped == (ids[-1] in stops)
        assert stopped or len(ids) == 6


# ---- tiny runs ---------------------------------------------------------------------------

def test_rlhf_raises_a_rule_reward_while_kl_stays_finite(setup):
    root, _, base, prompts = setup
    run = root / "learn"
    summary = rlhf([str(prompts)], model=str(base), out=str(run),
                   reward_fn=f"{root / 'my_rewards.py'}:digits",
                   rl=RLConfig(group=8, max_new_tokens=8, eval_prompts=8),
                   train=tiny(12, eval_every=12))
    log = [r for r in rows(run) if "reward" in r]
    assert len(log) == 12
    first = sum(r["reward"] for r in log[:3]) / 3
    last = sum(r["reward"] for r in log[-3:]) / 3
    assert first < 0.1 and last > first + 0.2, (first, last)  # measured: 0.03 → 0.6
    assert all(math.isfinite(r["kl"]) and r["kl"] >= 0 for r in log)
    assert log[-1]["kl"] > 0  # it did move away from the reference
    assert {"length", "stopped", "reward_std"} <= set(log[0])
    assert any("eval_reward" in r for r in rows(run))
    assert summary["reward_last"] > summary["reward_first"]
    assert "eval_reward_before" in summary and "eval_reward_last" in summary
    assert (run / "rl.png").stat().st_size > 1000
    assert load_model(run / "model").config.vocab_size == load_model(base).config.vocab_size


@pytest.mark.parametrize("algo, epochs", [("grpo", 1), ("ppo", 2)])
def test_resumed_run_reproduces_every_step(setup, algo, epochs):
    root, _, base, prompts = setup
    run = root / f"resume-{algo}"
    kw = dict(model=str(base), out=str(run), reward_fn=f"{root / 'my_rewards.py'}:digits",
              rl=RLConfig(algo=algo, ppo_epochs=epochs, group=4, max_new_tokens=6, eval_prompts=4),
              train=tiny(4, save_every=2, eval_every=2))
    rlhf([str(prompts)], **kw)
    full = rows(run)
    shutil.rmtree(run / "checkpoints" / "step-0000004")  # as if killed after step 2's checkpoint
    shutil.rmtree(run / "model")
    rlhf([str(prompts)], **kw, resume=True)
    again = rows(run)
    # Wall-clock speed differs, and the loop counts tokens from the resume on; everything
    # else (samples, rewards, losses, KL, evaluations) is the same, bit for bit.
    drop = ("tok_s", "tokens", "tflops", "mfu", "mem_gib")
    assert [{k: v for k, v in r.items() if k not in drop} for r in again] == \
           [{k: v for k, v in r.items() if k not in drop} for r in full]
    assert (algo == "ppo") == ("value_loss" in full[0])
    assert epochs == 1 or "clipped" in full[0]


def test_lora_trains_only_the_adapter_against_the_base(setup, monkeypatch):
    root, _, base, prompts = setup
    seen = {}
    keep = rlhf_module.save_result
    monkeypatch.setattr(rlhf_module, "save_result",
                        lambda net, *a: seen.setdefault("net", net) and keep(net, *a))
    run = root / "lora"
    rlhf([str(prompts)], model=str(base), out=str(run), method="lora",
         reward_fn=f"{root / 'my_rewards.py'}:digits",
         rl=RLConfig(group=4, max_new_tokens=6, eval_prompts=0), train=tiny(3))
    before = load_model(base).state_dict()
    after = base_state_dict(seen["net"])
    assert set(after) == set(before)
    assert all(torch.equal(after[k], before[k]) for k in before)  # the base never moved
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (run / "adapter").iterdir()}
    assert not (run / "model").exists()
    log = [r for r in rows(run) if "kl" in r]
    assert log[-1]["kl"] > 0  # the adapter-off reference differs from the trained policy


def test_reward_model_scores_replies(setup):
    root, tok, base, prompts = setup
    torch.manual_seed(3)
    rm = save_classifier(root / "rm", Classifier(preset("test", vocab_size=tok.vocab_size), ["reward"]), tok)
    run = root / "with-rm"
    rlhf([str(prompts)], model=str(base), out=str(run), reward_model=str(rm),
         rl=RLConfig(group=4, max_new_tokens=6, eval_prompts=0), train=tiny(2))
    log = [r for r in rows(run) if "reward" in r]
    assert len(log) == 2 and all(math.isfinite(r["reward"]) and r["reward_std"] > 0 for r in log)


@pytest.mark.parametrize("args, needle", [
    (["--reward_fn", "nosuch"], "--reward_fn 'nosuch': not a reward function; use a built-in"),
    (["--reward_fn", "missing.py:score"], "missing.py: no such file"),
    (["--reward_fn", "arithmetic", "--reward_model", "x"], "give one reward"),
    (["--reward_fn", "arithmetic", "--group", "1"], "needs at least 2"),
    (["--reward_fn", "arithmetic", "--BAD_ROW"], "bad.jsonl:2: no number to check against"),
])
def test_bad_reward_or_data_is_one_line(setup, tmp_path, capsys, args, needle):
    _, _, base, prompts = setup
    if "--BAD_ROW" in args:
        args = args[:-1]
        prompts = tmp_path / "bad.jsonl"
        prompts.write_text(json.dumps({"prompt": "1 + 1?", "answer": 2}) + "\n"
                           + json.dumps({"prompt": "what?"}) + "\n")
    with pytest.raises(SystemExit) as e:
        main(["train", "rlhf", str(prompts), "--model", str(base), "--out", str(tmp_path / "r"), *args])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and needle in err, err


def test_cli_bad_reward_exits_2_with_one_line(setup, tmp_path):
    _, _, base, prompts = setup
    r = run_cli("train", "rlhf", str(prompts), "--model", str(base), "--out", str(tmp_path / "r"),
                "--reward_fn", "nosuch")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert r.stderr.startswith("error: --reward_fn 'nosuch'")
