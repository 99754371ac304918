"""KTO: the loss by hand, the mismatched sequences of the KL estimate, training that moves
liked and disliked replies' rewards apart, exact resume, one-line errors."""

import json
import math

import pytest
import torch
from conftest import kill_fit_during, run_cli, tiny_corpus
from test_dpo import by_hand, metrics, reply, single_thread, tiny, user

import jielong.train.kto as kto_mod
from jielong.checkpoint import save_model
from jielong.data.preferences import Rating, encode_response
from jielong.tokenizer import train_tokenizer
from jielong.train.kto import KTOStage, kto_loss, mismatched, partners
from jielong.train.loop import TrainConfig
from jielong.train.reference import reference_logps


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    yield from single_thread()


@pytest.fixture
def one_thread_cli(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(tiny_corpus(200), vocab_size=400)


@pytest.fixture
def base(tmp_path, tok):
    return save_model(tmp_path / "base", tiny(tok), tok)


def sig(x):
    return 1 / (1 + math.exp(-x))


def test_kto_loss_by_hand():
    policy = torch.tensor([-5.0, -7.0, -6.0, -4.0], requires_grad=True)
    ref = torch.tensor([-6.0, -6.0, -6.5, -6.0])
    kl_policy = torch.tensor([-10.0, -9.0, -11.0, -8.0], requires_grad=True)
    kl_ref = torch.tensor([-10.5, -9.2, -10.8, -8.4])
    good = torch.tensor([True, False, True, False])
    beta, wd, wu = 0.5, 1.3, 0.7
    losses, rewards, z0 = kto_loss(policy, ref, kl_policy, kl_ref, good, beta, wd, wu)
    z = (0.5 + 0.2 - 0.2 + 0.4) / 4
    lr = [1.0, -1.0, 0.5, 2.0]
    expected = [wd * (1 - sig(beta * (lr[0] - z))), wu * (1 - sig(beta * (z - lr[1]))),
                wd * (1 - sig(beta * (lr[2] - z))), wu * (1 - sig(beta * (z - lr[3])))]
    assert z0.item() == pytest.approx(z)
    assert losses.tolist() == pytest.approx(expected, rel=1e-6)
    assert rewards.tolist() == pytest.approx([beta * x for x in lr])
    losses.mean().backward()
    assert kl_policy.grad is None  # the reference point carries no gradient
    # A negative KL estimate is clamped to 0.
    _, _, z0 = kto_loss(policy, ref, kl_ref, kl_policy, good, beta)
    assert z0.item() == 0.0


def test_partners_form_one_cycle():
    for n in (2, 3, 17):
        p = partners(n, seed=5)
        assert sorted(p) == list(range(n)) and all(p[i] != i for i in range(n))
        seen, i = set(), 0
        while i not in seen:
            seen.add(i)
            i = p[i]
        assert len(seen) == n


RATINGS = [Rating(user("阿明的寵物是什麼？"), reply("阿明的寵物是貓。"), True, "x:1"),
           Rating(user("What does Mei keep?"), reply("不知道。"), False, "x:2"),
           Rating([{"role": "system", "content": "你是助手。"}] + user("1 + 2 = ?"),
                  reply("1 + 2 = 3。"), True, "x:3")]


def test_stage_loss_by_hand_with_mismatched_replies(tok):
    policy_model, ref_model = tiny(tok, 0), tiny(tok, 1)
    rows = [encode_response(tok, r.prompt, r.completion) for r in RATINGS]
    other = partners(len(rows), seed=0)
    kl_rows = mismatched([(rows[i], rows[other[i]]) for i in range(3)], [], 512)
    for i, r in enumerate(RATINGS):  # prompt i with the reply of its partner, as the template renders it
        assert kl_rows[i] == encode_response(tok, r.prompt, RATINGS[other[i]].completion)
    ref = reference_logps(ref_model, rows + kl_rows, 0, 4)
    stage = KTOStage(rows, kl_rows, [r.label for r in RATINGS], torch.stack(ref.chunk(2), 1), None,
                     0, TrainConfig(batch_size=3), beta=0.3, weights=(1.0, 1.5))
    with torch.no_grad():
        loss, _ = stage.loss(policy_model, stage.batch(0, 0, 0))
    pi = [by_hand(policy_model, *r) for r in rows]
    rf = [by_hand(ref_model, *r) for r in rows]
    z = max(0.0, sum(by_hand(policy_model, *r) - by_hand(ref_model, *r) for r in kl_rows) / 3)
    expected = [(1.0 * (1 - sig(0.3 * (p - q - z)))) if r.label else 1.5 * (1 - sig(0.3 * (z - (p - q))))
                for p, q, r in zip(pi, rf, RATINGS, strict=True)]
    assert loss.item() == pytest.approx(sum(expected) / 3, rel=1e-4)
    m = stage.step_metrics()
    assert m["kl"] == pytest.approx(z, abs=1e-4)
    assert m["rewards/undesirable"] == pytest.approx(0.3 * (pi[1] - rf[1]), abs=1e-4)


def write_ratings(path, n=48):
    """Liked: answers. Disliked: "不知道" or a wrong sum."""
    rows = []
    for i in range(n):
        a, b = i % 9, (i * 7) % 11
        good = i % 2 == 0
        text = f"{a} + {b} = {a + b}。" if good else ("不知道。" if i % 4 == 1 else "I do not know.")
        rows.append({"prompt": f"{a} + {b} = ?", "completion": text, "label": "👍" if good else "👎"})
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def test_kto_moves_liked_and_disliked_rewards_apart(tmp_path, base):
    data = write_ratings(tmp_path / "ratings.jsonl")
    run = tmp_path / "run"
    out = kto_mod.kto([str(data)], model=str(base), out=str(run), max_len=128, val_fraction=0.25,
                      train=TrainConfig(steps=30, batch_size=8, lr=3e-3, warmup_steps=2,
                                        eval_every=15, save_every=30))
    rows = metrics(run)
    val = [r for r in rows if "val_loss" in r]
    assert val[-1]["val_rewards/desirable"] > 0.5 > -0.5 > val[-1]["val_rewards/undesirable"]
    assert val[-1]["val_rewards/margin"] > val[0]["val_rewards/margin"] > 0
    steps = [r for r in rows if "kl" in r and "loss" in r]
    assert steps[0]["kl"] == pytest.approx(0, abs=1e-4) and steps[0]["loss"] == pytest.approx(0.5, abs=1e-3)
    assert all(r["kl"] >= 0 for r in steps)
    assert out["val_rewards/margin"] == val[-1]["val_rewards/margin"]
    assert (run / "model" / "model.safetensors").exists() and (run / "ref_logps.pt").exists()


def test_kto_resume_gives_the_uninterrupted_run(tmp_path, base, monkeypatch):
    data = write_ratings(tmp_path / "ratings.jsonl", 24)
    cfg = dict(steps=4, batch_size=4, lr=3e-3, warmup_steps=1, save_every=2, eval_every=2)
    kw = dict(model=str(base), max_len=128, val_fraction=0.2)
    kto_mod.kto([str(data)], out=str(tmp_path / "a"), train=TrainConfig(**cfg), **kw)
    real_fit = kill_fit_during(kto_mod, monkeypatch, 4)  # during step 4, after the checkpoint of step 2
    with pytest.raises(RuntimeError, match="killed"):
        kto_mod.kto([str(data)], out=str(tmp_path / "b"), train=TrainConfig(**cfg), **kw)
    monkeypatch.setattr(kto_mod, "fit", real_fit)
    kto_mod.kto([str(data)], out=str(tmp_path / "b"), train=TrainConfig(**cfg), resume=True, **kw)
    drop = ("tok_s", "tokens", "tflops", "mfu", "mem_gib")
    a, b = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    assert [{k: v for k, v in r.items() if k not in drop} for r in a] == \
        [{k: v for k, v in r.items() if k not in drop} for r in b]


def test_cli_error_is_one_line(tmp_path, base, one_thread_cli):
    data = tmp_path / "ratings.jsonl"
    data.write_text('{"prompt": "hi", "completion": "hello", "label": true}\n'
                    '{"prompt": "hi", "completion": "bye", "label": "maybe"}\n')
    r = run_cli("train", "kto", str(data), "--model", str(base), "--out", str(tmp_path / "r"))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {data}:2: label \"maybe\"")


def test_bad_weights(tmp_path, base):
    from jielong.cli import run
    from jielong.errors import UserError

    data = write_ratings(tmp_path / "ratings.jsonl", 4)
    with pytest.raises(UserError, match="--undesirable_weight=0.0 must be a positive number"):
        run(["train", "kto", str(data), "--model", str(base), "--out", str(tmp_path / "r"),
             "--undesirable_weight", "0"])


def test_row_weights_count_as_copies_and_zero_as_left_out(tok):
    """Σ w·loss / Σ w, and z0 weighted the same: a rating of weight 2 is the rating twice in
    its batch, one of weight 0 the rating left out — the loss and every gradient alike."""
    policy_model, ref_model = tiny(tok, 0), tiny(tok, 1)
    rows = [encode_response(tok, r.prompt, r.completion) for r in RATINGS]
    other = partners(len(rows), seed=0)
    kl_rows = mismatched([(rows[i], rows[other[i]]) for i in range(3)], [], 512)
    ref = torch.stack(reference_logps(ref_model, rows + kl_rows, 0, 4).chunk(2), 1)

    def run(pick, row_weights=None):
        stage = KTOStage([rows[i] for i in pick], [kl_rows[i] for i in pick],
                         [RATINGS[i].label for i in pick], ref[pick], None, 0,
                         TrainConfig(batch_size=len(pick)), beta=0.3, weights=(1.0, 1.5),
                         row_weights=row_weights)
        policy_model.zero_grad()
        loss, _ = stage.loss(policy_model, stage.batch(0, 0, 0))
        loss.backward()
        return loss.item(), torch.cat([p.grad.flatten() for p in policy_model.parameters()
                                       if p.grad is not None])

    plain = run([0, 1, 2])
    for (pick, w), same in ((([0, 1, 2], [2.0, 1.0, 1.0]), [0, 0, 1, 2]),
                            (([0, 1, 2], [1.0, 1.0, 0.0]), [0, 1]),
                            (([0, 1, 2], [1.0, 1.0, 1.0]), [0, 1, 2])):
        weighted, copies = run(pick, w), run(same)
        assert weighted[0] == pytest.approx(copies[0], rel=1e-5), w
        assert torch.allclose(weighted[1], copies[1], rtol=1e-4, atol=1e-7), w
        if w != [1.0, 1.0, 1.0]:  # the weights change something
            assert abs(weighted[0] - plain[0]) > 1e-4
