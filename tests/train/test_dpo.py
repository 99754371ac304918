"""DPO: reply log-probs by hand, the three losses by hand, training that learns a planted
preference, no second model in memory, exact resume, one-line errors."""

import copy
import gc
import json
import math
import warnings

import pytest
import torch
from conftest import kill_fit_during, run_cli, tiny_corpus

import jielong.train.dpo as dpo_mod
import jielong.train.reference as reference_mod
from jielong.checkpoint import load_model, save_model
from jielong.config import preset
from jielong.data.chat import IGNORE
from jielong.data.preferences import PrefPair, encode_response
from jielong.errors import UserError
from jielong.model import Transformer
from jielong.tokenizer import train_tokenizer
from jielong.train.dpo import DPOStage, Objective
from jielong.train.loop import TrainConfig
from jielong.train.reference import pad_rows, reference_logps, sequence_logps


def single_thread():
    """Tiny models gain nothing from a second thread, and on a busy shared machine every
    multi-threaded op waits for a core: one thread keeps these tests a few seconds each."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    yield from single_thread()


@pytest.fixture
def one_thread_cli(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(tiny_corpus(200), vocab_size=400)


def tiny(tok, seed=0):
    torch.manual_seed(seed)
    return Transformer(preset("test", vocab_size=tok.vocab_size)).eval()


def user(text):
    return [{"role": "user", "content": text}]


def reply(text):
    return [{"role": "assistant", "content": text}]


PAIRS = [PrefPair(user("阿明的寵物是什麼？"), reply("阿明的寵物是貓。"), reply("不知道。"), "x:1"),
         PrefPair([{"role": "system", "content": "你是助手。"}] + user("What does Mei keep?"),
                  reply("Mei keeps a goose."), reply("A cat, 12 of them."), "x:2")]


def by_hand(model, ids, labels):
    """Σ log_softmax(logits[t-1])[ids[t]] over the labelled tokens t, one token at a time."""
    logits = model(torch.tensor([ids]))[0]
    total = 0.0
    for t in range(1, len(ids)):
        if labels[t] != IGNORE:
            total += torch.log_softmax(logits[t - 1].double(), -1)[ids[t]].item()
    return total


def test_reply_log_probs_match_a_token_by_token_sum(tok):
    model = tiny(tok)
    rows = [encode_response(tok, p.prompt, r) for p in PAIRS for r in (p.chosen, p.rejected)]
    ids, labels = pad_rows(rows, pad_id=0)  # different lengths: right padding is exercised
    with torch.no_grad():
        sums, counts = sequence_logps(model, ids, labels, chunk=7)
    replies = [r for p in PAIRS for r in (p.chosen, p.rejected)]
    for (x, y), s, n, r in zip(rows, sums, counts, replies, strict=True):
        assert s.item() == pytest.approx(by_hand(model, x, y), abs=1e-4)
        # The count is the reply's tokens and its end-of-turn token, nothing of the prompt.
        assert n.item() == len(tok.encode(r[0]["content"] + "<|im_end|>"))
    assert reference_logps(model, rows, 0, batch_size=3).tolist() == pytest.approx(sums.tolist(), abs=1e-5)


class PromptScrambled(torch.nn.Module):
    """The model, with the hidden states that predict prompt tokens replaced by noise."""

    def __init__(self, base, labels):
        super().__init__()
        self.base, self.lm_head = base, base.lm_head
        self.noise_at = torch.zeros_like(labels, dtype=torch.bool)
        self.noise_at[:, :-1] = labels[:, 1:] == IGNORE

    def forward(self, ids, hidden_only=False):
        h = self.base(ids, hidden_only=True)
        return torch.where(self.noise_at[..., None], 50 * torch.randn_like(h), h)


def test_prompt_tokens_never_count(tok):
    model = tiny(tok)
    rows = [encode_response(tok, p.prompt, p.chosen) for p in PAIRS]
    ids, labels = pad_rows(rows, pad_id=0)
    with torch.no_grad():
        plain, n = sequence_logps(model, ids, labels)
        scrambled, n2 = sequence_logps(PromptScrambled(model, labels), ids, labels)
        logits = model(ids)
    assert torch.equal(n, n2) and scrambled.tolist() == pytest.approx(plain.tolist(), abs=1e-5)
    # ... while the scrambled positions do change those logits: the check has teeth.
    assert not torch.allclose(logits, PromptScrambled(model, labels)(ids, True) @ model.lm_head.weight.T)


def test_the_three_losses_by_hand(tok):
    policy_model, ref_model = tiny(tok, 0), tiny(tok, 1)
    pairs = [(encode_response(tok, p.prompt, p.chosen), encode_response(tok, p.prompt, p.rejected))
             for p in PAIRS]
    pi = [[by_hand(policy_model, *row) for row in pair] for pair in pairs]
    ref = [[by_hand(ref_model, *row) for row in pair] for pair in pairs]
    n = [[sum(t != IGNORE for t in row[1]) for row in pair] for pair in pairs]
    beta = 0.5

    def logsig(x):
        return -math.log1p(math.exp(-x))

    h = [(pc - rc) - (pr - rr) for (pc, pr), (rc, rr) in zip(pi, ref, strict=True)]
    expected = {
        "sigmoid": sum(-logsig(beta * x) for x in h) / 2,
        "smoothed": sum(-0.8 * logsig(beta * x) - 0.2 * logsig(-beta * x) for x in h) / 2,
        "ipo": sum(((pc - rc) / nc - (pr - rr) / nr - 1 / (2 * beta)) ** 2 for (pc, pr), (rc, rr), (nc, nr)
                   in zip(pi, ref, n, strict=True)) / 2,
        "simpo": sum(-logsig(beta * (pc / nc - pr / nr) - 0.3) for (pc, pr), (nc, nr)
                     in zip(pi, n, strict=True)) / 2,
    }
    nll = sum(-pc / nc for (pc, _), (nc, _) in zip(pi, n, strict=True)) / 2  # chosen, per token
    expected["sigmoid+sft"] = expected["sigmoid"] + 0.7 * nll
    expected["simpo+sft"] = expected["simpo"] + 0.7 * nll
    ref_cache = reference_logps(ref_model, [r for pair in pairs for r in pair], 0, 4).view(-1, 2)
    for name, obj in {"sigmoid": Objective("sigmoid", beta),
                      "smoothed": Objective("sigmoid", beta, label_smoothing=0.2),
                      "ipo": Objective("ipo", beta), "simpo": Objective("simpo", beta, gamma=0.3),
                      "sigmoid+sft": Objective("sigmoid", beta, sft_weight=0.7),
                      "simpo+sft": Objective("simpo", beta, gamma=0.3, sft_weight=0.7)}.items():
        stage = DPOStage(pairs, [], ref_cache if obj.uses_reference else None, None, 0, obj,
                         TrainConfig(batch_size=2))
        batch = stage.batch(0, 0, 0)
        assert sorted(stage.sampler.indices(0, 0, 0)) == [0, 1]  # both pairs, in some order
        with torch.no_grad():
            loss, n_tokens = stage.loss(policy_model, batch)
        assert loss.item() == pytest.approx(expected[name], rel=1e-4), name
        assert n_tokens == sum(len(r[0]) for pair in pairs for r in pair)
        m = stage.step_metrics()
        if name == "sigmoid":
            rewards = [[beta * (a - b) for a, b in zip(p, r, strict=True)] for p, r in zip(pi, ref, strict=True)]
            assert m["rewards/chosen"] == pytest.approx(sum(r[0] for r in rewards) / 2, abs=1e-4)
            assert m["rewards/rejected"] == pytest.approx(sum(r[1] for r in rewards) / 2, abs=1e-4)
            assert m["rewards/accuracy"] == sum(r[0] > r[1] for r in rewards) / 2


def test_fused_log_probs_give_autograd_gradients():
    torch.manual_seed(0)
    hidden = torch.randn(2, 9, 16, requires_grad=True)
    head = torch.nn.Linear(16, 50, bias=False)
    ids = torch.randint(0, 50, (2, 9))
    labels = ids.clone()
    labels[:, :4] = IGNORE

    class Net(torch.nn.Module):
        lm_head = head

        def forward(self, x, hidden_only=False):
            return hidden

    sums, _ = sequence_logps(Net(), ids, labels, chunk=5)
    (sums * torch.tensor([0.3, -1.7])).sum().backward()
    fused = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad = head.weight.grad = None
    logp = torch.log_softmax(head(hidden[:, :-1]), -1).gather(2, ids[:, 1:, None])[..., 0]
    plain = (logp * (labels[:, 1:] != IGNORE)).sum(1)
    (plain * torch.tensor([0.3, -1.7])).sum().backward()
    assert torch.allclose(sums, plain, atol=1e-5)
    assert torch.allclose(fused[0], hidden.grad, atol=1e-5)
    assert torch.allclose(fused[1], head.weight.grad, atol=1e-5)


# ------------------------------------------------------------------------------- training


def write_prefs(path, n=48):
    """A planted preference: answering beats "不知道" on every prompt."""
    rows = []
    for i in range(n):
        a, b = i % 9, (i * 7) % 11
        rows.append({"prompt": f"{a} + {b} = ?", "chosen": f"{a} + {b} = {a + b}。",
                     "rejected": "不知道。" if i % 2 else "I do not know."})
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


@pytest.fixture
def base(tmp_path, tok):
    return save_model(tmp_path / "base", tiny(tok), tok)


def metrics(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


FAST = dict(steps=30, batch_size=4, lr=3e-3, warmup_steps=2, eval_every=15, save_every=30)


def test_dpo_learns_a_planted_preference(tmp_path, base, tok):
    data = write_prefs(tmp_path / "prefs.jsonl")
    run = tmp_path / "run"
    out = dpo_mod.dpo([str(data)], model=str(base), out=str(run), beta=0.1, max_len=128,
                      val_fraction=0.25, train=TrainConfig(**FAST))
    rows = metrics(run)
    val = [r for r in rows if "val_loss" in r]
    assert val[-1]["val_rewards/accuracy"] >= 0.9 and val[-1]["val_rewards/margin"] > 1.0
    assert val[-1]["val_loss"] < math.log(2) - 0.2  # −log σ(0) = log 2 at the start
    steps = [r for r in rows if "rewards/margin" in r]
    assert steps[0]["rewards/margin"] == pytest.approx(0, abs=1e-3)  # the policy starts as the reference
    assert sum(r["rewards/accuracy"] for r in steps[-5:]) / 5 >= 0.9
    # The trained model itself now prefers the chosen replies, more than the reference does.
    trained, start = load_model(run / "model").eval(), load_model(base).eval()
    p = PrefPair(user("3 + 5 = ?"), reply("3 + 5 = 8。"), reply("不知道。"))
    ids, labels = pad_rows([encode_response(tok, p.prompt, p.chosen),
                            encode_response(tok, p.prompt, p.rejected)], 0)
    with torch.no_grad():
        (c1, r1), (c0, r0) = sequence_logps(trained, ids, labels)[0], sequence_logps(start, ids, labels)[0]
    assert (c1 - r1) > (c0 - r0) + 5
    assert (run / "ref_logps.pt").exists() and (run / "loss.png").exists()
    assert out["val_rewards/accuracy"] == val[-1]["val_rewards/accuracy"]


def live_tensor_bytes() -> int:
    """Bytes of every distinct tensor storage the Python heap holds (gc sees tensors)."""
    gc.collect()
    storages = {}
    with warnings.catch_warnings():  # isinstance() on some deprecated torch objects warns
        warnings.simplefilter("ignore")
        tensors = [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]
    for t in tensors:
        if t.device.type != "cpu":
            continue
        try:
            s = t.untyped_storage()
            storages[s.data_ptr()] = s.nbytes()
        except RuntimeError:  # a fake tensor torch.compile left behind holds no memory
            continue
    return sum(storages.values())


def measure_in_training(monkeypatch, at_call: int = 1) -> dict:
    """Replace dpo's `fit` with one whose stage measures the live tensors while training,
    less those alive before (what earlier tests in this process left behind)."""
    seen: dict = {}
    real_fit = dpo_mod.fit
    before = live_tensor_bytes()

    def spy_fit(model, stage, cfg, run, **kw):
        loss, calls = stage.loss, [0]

        def measured(m, batch):
            if calls[0] == at_call:
                seen["live"] = live_tensor_bytes() - before
                seen["model"] = sum(p.numel() * p.element_size()
                                    for p in {id(p): p for p in model.parameters()}.values())
            calls[0] += 1
            return loss(m, batch)
        stage.loss = measured
        return real_fit(model, stage, cfg, run, **kw)

    monkeypatch.setattr(dpo_mod, "fit", spy_fit)
    return seen


def test_the_measurement_sees_a_model_copy(tok):
    model = tiny(tok)
    size = sum(p.numel() * 4 for p in model.parameters())
    before = live_tensor_bytes()
    twin = copy.deepcopy(model)
    assert live_tensor_bytes() - before >= size
    del twin


@pytest.mark.parametrize("method", ["lora", "full"])
def test_no_second_model_in_memory_while_training(tmp_path, base, tok, monkeypatch, method):
    """LoRA: the reference is the base with adapters off. Full, even with a separate --ref
    model: that one is loaded for the reference pass alone and freed before training."""
    data = write_prefs(tmp_path / "prefs.jsonl", 24)
    ref = None
    if method == "full":
        ref = str(save_model(tmp_path / "ref", tiny(tok, 3), tok))
    seen = measure_in_training(monkeypatch)
    dpo_mod.dpo([str(data)], model=str(base), ref=ref, out=str(tmp_path / "run"), method=method,
                max_len=128, train=TrainConfig(steps=3, batch_size=4, lr=1e-3, warmup_steps=0))
    # At step 2: the model, plus AdamW's two moments per trained weight (full: 2×; LoRA:
    # the small adapters), the data and cached log-probs. A second model would add 1×.
    limit = 1.6 if method == "lora" else 3.6
    assert seen["live"] < limit * seen["model"], seen["live"] / seen["model"]
    assert seen["live"] > (0.9 if method == "lora" else 2.9) * seen["model"]  # sees what it should


def test_resume_gives_the_uninterrupted_run(tmp_path, base, monkeypatch):
    data = write_prefs(tmp_path / "prefs.jsonl", 24)
    cfg = dict(steps=6, batch_size=4, lr=3e-3, warmup_steps=1, save_every=3, eval_every=3)
    kw = dict(model=str(base), max_len=128, val_fraction=0.2, method="lora")
    dpo_mod.dpo([str(data)], out=str(tmp_path / "a"), train=TrainConfig(**cfg), **kw)

    real_fit = kill_fit_during(dpo_mod, monkeypatch, 5)  # during step 5, after the checkpoint of step 3
    with pytest.raises(RuntimeError, match="killed"):
        dpo_mod.dpo([str(data)], out=str(tmp_path / "b"), train=TrainConfig(**cfg), **kw)
    monkeypatch.setattr(dpo_mod, "fit", real_fit)
    with pytest.raises(UserError, match="--resume"):  # never silently start over
        dpo_mod.dpo([str(data)], out=str(tmp_path / "b"), train=TrainConfig(**cfg), **kw)

    def no_recompute(*a, **k):
        raise AssertionError("the reference log-probs were computed again")

    monkeypatch.setattr(reference_mod, "compute_reference", no_recompute)
    dpo_mod.dpo([str(data)], out=str(tmp_path / "b"), train=TrainConfig(**cfg), resume=True, **kw)
    a, b = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    drop = ("tok_s", "tokens", "tflops", "mfu", "mem_gib")  # throughput counts restart with the process
    assert [{k: v for k, v in r.items() if k not in drop} for r in a] == \
        [{k: v for k, v in r.items() if k not in drop} for r in b]


@pytest.mark.parametrize("loss", ["ipo", "simpo"])
def test_ipo_and_simpo_run(tmp_path, base, loss):
    data = write_prefs(tmp_path / "prefs.jsonl", 16)
    run = tmp_path / "run"
    dpo_mod.dpo([str(data)], model=str(base), out=str(run), loss=loss, max_len=128,
                train=TrainConfig(steps=4, batch_size=4, lr=3e-3, warmup_steps=0, eval_every=4))
    last = metrics(run)[-1]
    assert math.isfinite(last["val_loss"]) and "val_rewards/margin" in last
    assert (run / "ref_logps.pt").exists() == (loss == "ipo")  # SimPO needs no reference


# ------------------------------------------------------------------------------------ CLI


def test_cli_lora_run_and_summary(tmp_path, base, one_thread_cli):
    data = write_prefs(tmp_path / "prefs.jsonl", 24)
    r = run_cli("train", "dpo", str(data), "--model", str(base), "--out", str(tmp_path / "run"),
                "--method", "lora", "--steps", "4", "--batch_size", "4", "--max_len", "128",
                "--eval_every", "4")
    assert r.returncode == 0, r.stderr
    assert "learning rate 1e-05, the LoRA default" in r.stdout
    assert "reference log-probs: computed for" in r.stdout and "adapters off" in r.stdout
    assert "done: 4 steps" in r.stdout and "validation reward accuracy" in r.stdout
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").exists()


@pytest.mark.parametrize("args, message", [
    (["--beta", "0"], "--beta=0.0 must be a positive number"),
    (["--label_smoothing", "0.5"], "--label_smoothing=0.5 must be in [0, 0.5)"),
    (["--loss", "ipo", "--label_smoothing", "0.1"], "applies to --loss sigmoid only"),
    (["--sft_weight", "-1"], "--sft_weight=-1.0 must be 0 or more"),
    (["--loss", "simpo", "--ref", "x"], "SimPO needs no reference model"),
])
def test_bad_options(tmp_path, base, args, message):
    from jielong.cli import run

    data = write_prefs(tmp_path / "prefs.jsonl", 4)
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace(")", r"\)")):
        run(["train", "dpo", str(data), "--model", str(base), "--out", str(tmp_path / "r"), *args])


def test_cli_error_is_one_line(tmp_path, base, one_thread_cli):
    data = tmp_path / "ratings.jsonl"
    data.write_text('{"prompt": "hi", "completion": "hello", "label": true}\n')
    r = run_cli("train", "dpo", str(data), "--model", str(base), "--out", str(tmp_path / "r"))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {data}:1: ") and "kto" in lines[0]
