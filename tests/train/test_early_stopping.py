"""Validation during training: early stopping on val_loss, the best checkpoint kept beside
the last, --load_best_at_end, exact resume mid-patience, and the train-vs-validation plot."""

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli

from jielong.checkpoint import list_checkpoints, load_model
from jielong.config import preset
from jielong.errors import UserError
from jielong.model import Transformer
from jielong.plots import loss_curve, loss_series
from jielong.train.loop import TrainConfig, fit


def planted(step: int) -> float:
    """The validation loss the stage reports at `step`: falls to its best at step 20, then rises."""
    return 1.0 + (step - 20) ** 2 / 100


class Planted:
    """Learns to count (real weights move every step); evaluate() reports `planted(step)` and
    keeps a copy of the weights it was shown, so tests can tell which step a checkpoint holds."""

    def __init__(self, die_at: int | None = None):
        self.step = 0
        self.die_at = die_at
        self.seen: dict[int, dict[str, torch.Tensor]] = {}

    def batch(self, step, micro, rank):
        if step == self.die_at:
            raise KeyboardInterrupt  # killed mid-run, after the last checkpoint
        self.step = step + 1
        return {"ids": torch.arange(step % 8, step % 8 + 17).repeat(4, 1)}

    def loss(self, model, batch):
        logits = model(batch["ids"][:, :-1])
        return F.cross_entropy(logits.flatten(0, 1), batch["ids"][:, 1:].flatten()), 64

    def evaluate(self, model):
        self.seen[self.step] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return {"val_loss": planted(self.step)}


def cfg(**kw) -> TrainConfig:
    base = dict(steps=100, lr=3e-3, warmup_steps=2, eval_every=5, save_every=5, patience=3,
                batch_size=4, device="cpu")
    return TrainConfig(**{**base, **kw})


def model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(preset("test", vocab_size=32))


def rows(run) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def weights(path) -> dict:
    return load_model(path).state_dict()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run with patience 3: evaluations at 5, 10, …; best at 20; stop at 35."""
    run = tmp_path_factory.mktemp("ref") / "run"
    net, stage = model(), Planted()
    summary = fit(net, stage, cfg(), run)
    return run, net, stage, summary


def test_stops_after_patience_evaluations_and_keeps_the_best(reference, capsys):
    run, net, stage, summary = reference
    assert summary["steps"] == 35 and summary["stopped_early"] is True
    assert summary["best_step"] == 20 and summary["best_val"] == planted(20)
    assert max(r["step"] for r in rows(run) if "loss" in r) == 35  # no step trained after the stop
    assert rows(run)[-1] == {"step": 35, "best_step": 20, "best_val": 1.0, "stopped_early": True}
    assert [p.name for p in list_checkpoints(run)] == ["step-0000030", "step-0000035"]  # best not listed
    assert json.loads((run / "checkpoints" / "best" / "best.json").read_text()) == {"step": 20, "val_loss": 1.0}
    assert same(weights(run / "checkpoints" / "best"), stage.seen[20])  # rotation left it alone
    assert not same(stage.seen[20], stage.seen[35])
    assert same(net.state_dict(), stage.seen[35])  # the result is the last step's by default


def test_the_stop_line_names_the_step_and_the_best(tmp_path, capsys):
    fit(model(), Planted(), cfg(steps=40, min_delta=0.5), tmp_path / "run")
    out = capsys.readouterr().out
    # min_delta 0.5: 15 (1.25) is best; 20 (1.0) is not better by more than 0.5; stop at 30
    assert "early stopping at step 30/40" in out and "1.2500 at step 15" in out


def test_load_best_at_end_makes_the_best_step_the_result(tmp_path):
    net, stage = model(), Planted()
    summary = fit(net, stage, cfg(load_best_at_end=True, save_every=100), tmp_path / "run")
    assert summary["steps"] == 35
    assert same(net.state_dict(), stage.seen[20])


def test_no_keep_best_writes_no_best_checkpoint(tmp_path):
    fit(model(), Planted(), cfg(steps=10, patience=0, keep_best=False), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints" / "best").exists()


def test_killed_mid_patience_resumes_to_the_same_stop(tmp_path, reference):
    ref_run = reference[0]
    run = tmp_path / "run"
    # killed in step 27: the last checkpoint is step 25, one evaluation (25) past the best (20)
    with pytest.raises(KeyboardInterrupt):
        fit(model(), Planted(die_at=27), cfg(), run)
    assert list_checkpoints(run)[-1].name == "step-0000025"
    state = torch.load(run / "checkpoints" / "step-0000025" / "trainer_state.pt", weights_only=False)
    assert state["early_stopping"] == {"best": 1.0, "best_step": 20, "waited": 1}
    net, stage = model(), Planted()
    summary = fit(net, stage, cfg(), run, resume=True)
    assert summary["steps"] == 35 and summary["best_step"] == 20
    def steady(r: dict) -> dict:  # throughput counters restart on resume; the rest is exact
        return {k: v for k, v in r.items() if k not in ("tokens", "tok_s", "tflops", "mfu", "mem_gib")}

    assert [steady(r) for r in rows(run)] == [steady(r) for r in rows(ref_run)]
    assert same(weights(run / "checkpoints" / "best"), weights(ref_run / "checkpoints" / "best"))
    # resuming a run that already stopped early trains nothing more
    again = fit(model(), Planted(), cfg(), run, resume=True)
    assert again["steps"] == 35 and again["stopped_early"] is True


def test_plot_draws_train_and_validation_with_the_best(reference, tmp_path):
    run = reference[0]
    data = loss_series(run / "metrics.jsonl")
    assert [s for s, _ in data["train"]] == list(range(1, 36))
    assert data["val"] == [(s, planted(s)) for s in range(5, 40, 5)]
    assert data["best"] == (20, 1.0) and data["stopped_early"] == 35
    png = loss_curve(run / "metrics.jsonl", tmp_path / "loss.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000


@pytest.mark.parametrize("kw, says", [
    (dict(patience=-1), "--patience=-1 must be 0 (off) or more"),
    (dict(patience=3, eval_every=100), "set --eval_every between 1 and 99"),
    (dict(patience=3, eval_every=0), "set --eval_every"),
    (dict(min_delta=-0.1), "--min_delta=-0.1 must be 0 or more"),
    (dict(load_best_at_end=True, keep_best=False), "drop --no-keep_best"),
])
def test_impossible_values_are_one_line(kw, says):
    with pytest.raises(UserError, match=says.replace("(", r"\(").replace(")", r"\)")) as e:
        cfg(**kw).validate()
    assert "\n" not in str(e.value)


def test_patience_without_a_validation_loss_is_one_line(tmp_path):
    class Blind(Planted):
        def evaluate(self, model):
            return {}

    with pytest.raises(UserError, match="needs a validation loss"):
        fit(model(), Blind(), cfg(steps=10), tmp_path / "run")


def test_the_cli_offers_the_options_and_refuses_bad_ones(tmp_path, capsys):
    from jielong.cli import parse
    from jielong.train.pretrain import pretrain

    with pytest.raises(SystemExit):
        parse(["pretrain", "--help"], {"pretrain": pretrain})
    help_ = capsys.readouterr().out
    assert all(f in help_ for f in ("--patience", "--min_delta", "--keep_best", "--no-keep_best",
                                    "--load_best_at_end", "Stop early when the validation loss"))
    _, kw = parse(["pretrain", "d.jsonl", "--patience", "2", "--min_delta", "0.01", "--no-keep_best"],
                  {"pretrain": pretrain})
    assert (kw["train"].patience, kw["train"].min_delta, kw["train"].keep_best) == (2, 0.01, False)
    r = run_cli("pretrain", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o"), "--patience", "2",
                "--eval_every", "0")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "set --eval_every" in r.stderr
