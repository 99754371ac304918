"""Pretraining end to end through the CLI: it learns, it resumes exactly after SIGKILL."""

import json
import re
import signal
import subprocess
import sys
import time

import pytest
from conftest import run_cli, tiny_corpus

from jielong.eval.command import eval_cmd
from jielong.train.loop import TrainConfig, lr_at

ARGS = ["--preset", "test", "--vocab_size", "320", "--seq_len", "32", "--batch_size", "4",
        "--warmup_steps", "5", "--eval_every", "50", "--lr", "3e-3", "--device", "cpu"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in tiny_corpus()),
                    encoding="utf-8")
    return path


def losses(run) -> dict[int, float]:
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_pretrain_learns_and_writes_an_hf_model(tmp_path, corpus):
    run = tmp_path / "run"
    r = run_cli("pretrain", str(corpus), "--out", str(run), "--steps", "60", *ARGS)
    assert r.returncode == 0, r.stderr
    curve = losses(run)
    assert len(curve) == 60
    assert curve[60] < 0.5 * curve[1], f"loss did not fall: {curve[1]} -> {curve[60]}"
    vals = [json.loads(ln)["val_loss"] for ln in (run / "metrics.jsonl").read_text().splitlines()
            if "val_loss" in ln]
    assert vals and vals[-1] < curve[1]
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json"} <= {p.name for p in (run / "model").iterdir()}
    assert (run / "loss.png").stat().st_size > 1000
    assert "model:" in r.stdout and "tokens/s" in r.stdout
    g = run_cli("generate", "The cat", "阿明住在", "--model", str(run / "model"), "--temperature", "0",
                "--max_tokens", "8")
    assert g.returncode == 0, g.stderr
    assert g.stdout.count("The cat") == 1 and "阿明住在" in g.stdout


def test_killed_run_resumes_with_identical_losses(tmp_path, corpus):
    steps = ["--steps", "200", "--save_every", "5"]
    ref = tmp_path / "ref"
    assert run_cli("pretrain", str(corpus), "--out", str(ref), *steps, *ARGS).returncode == 0

    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "jielong.cli", "pretrain", str(corpus), "--out", str(run), *steps, *ARGS]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    def saved_steps() -> list[int]:
        return [int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("step-*")]

    while not any(s >= 10 for s in saved_steps()) and time.time() < deadline:
        assert proc.poll() is None, "run ended before it could be killed"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "model").exists(), "the run finished before the kill; the test proves nothing"
    done_before_kill = len(losses(run))
    assert done_before_kill < 200

    again = run_cli("pretrain", str(corpus), "--out", str(run), *steps, *ARGS)
    assert again.returncode == 2 and "--resume" in again.stderr  # never silently overwrite

    resumed = run_cli("pretrain", str(corpus), "--out", str(run), *steps, *ARGS, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert losses(run) == losses(ref)  # every step, bit for bit
    assert len(list((run / "checkpoints").iterdir())) == 2  # keep_checkpoints, no temporaries


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_saves_the_step_in_progress_and_resumes_exactly(tmp_path, corpus, sig):
    """Ctrl-C (or a scheduler's SIGTERM) finishes the step in progress, saves a checkpoint
    there — not only at the last --save_every — and --resume then matches the run that was
    never interrupted, step for step."""
    steps = ["--steps", "120", "--save_every", "1000"]
    ref = tmp_path / "ref"
    assert run_cli("pretrain", str(corpus), "--out", str(ref), *steps, *ARGS).returncode == 0

    run = tmp_path / "stopped"
    cmd = [sys.executable, "-m", "jielong.cli", "pretrain", str(corpus), "--out", str(run), *steps, *ARGS]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not ((run / "metrics.jsonl").exists() and len(losses(run)) >= 7):
        assert proc.poll() is None and time.time() < deadline, "the run ended before the signal"
        time.sleep(0.01)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, (proc.returncode, err[-2000:])
    assert "Traceback" not in err
    assert not (run / "model").exists(), "the run finished before the signal; the test proves nothing"
    saved = [int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("step-*")]
    done = len(losses(run))
    assert saved == [done] and 7 <= done < 120  # the step in progress was finished and saved
    assert f"stopped after step {done}/120" in out and "--resume" in out

    resumed = run_cli("pretrain", str(corpus), "--out", str(run), *steps, *ARGS, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert losses(run) == losses(ref)


def test_schedules_warm_up_then_decay_to_the_floor():
    for schedule in ("cosine", "wsd"):
        cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1, schedule=schedule)
        lrs = [lr_at(s, cfg) for s in range(100)]
        assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
        assert all(a >= b - 1e-12 for a, b in zip(lrs[10:], lrs[11:], strict=False))
        assert lrs[-1] == pytest.approx(0.1, abs=0.02)
    wsd = TrainConfig(steps=100, lr=1.0, warmup_steps=10, schedule="wsd", decay_fraction=0.2)
    assert lr_at(79, wsd) == 1.0 and lr_at(90, wsd) < 1.0


def test_torchrun_two_processes_on_cpu(tmp_path, corpus):
    """DDP over gloo: rank 0 prepares the data, both train, one model is written; --eval_tasks
    questions are shared between the ranks and their counts summed."""
    run = tmp_path / "ddp"
    exam = tmp_path / "exam"
    exam.mkdir()
    (exam / "pets_test.csv").write_text("question,A,B,C,D,answer\n" + "".join(
        f"{q},貓,狗,鵝,魚,{'ABCD'[i % 4]}\n" for i, q in enumerate(
            ["阿明的寵物是什麼？", "What does Mei keep?", "阿明的宠物是什么？", "Which pet?", "寵物？"])),
        encoding="utf-8")
    # --standalone: the rendezvous takes a free port, not the fixed default one
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "jielong.cli", "pretrain", str(corpus), "--out", str(run), "--steps", "10", *ARGS,
           "--eval_tasks", str(exam), "--eval_shots", "0"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[:3000] + "\n…\n" + r.stderr[-1500:]
    assert len(losses(run)) == 10
    assert r.stdout.count("done: 10 steps") == 1
    assert re.search(r"peak memory [\d.]+ GiB \(ranks: [\d.]+, [\d.]+\)", r.stdout), r.stdout  # gathered on rank 0
    assert (run / "model" / "model.safetensors").exists()
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    [acc] = [x["eval/exam/acc"] for x in rows if "eval/exam/acc" in x]
    alone = eval_cmd(str(run / "model"), tasks=str(exam), shots=0, out=str(tmp_path / "e"), device="cpu")
    assert alone["tasks"]["exam"]["acc"] == acc and alone["tasks"]["exam"]["n"] == 5


def test_resume_clears_a_half_written_checkpoint(tmp_path, corpus):
    run = tmp_path / "r"
    assert run_cli("pretrain", str(corpus), "--out", str(run), "--steps", "6", "--save_every", "3",
                   *ARGS).returncode == 0
    half = run / "checkpoints" / ".step-0000009.tmp-12345"  # as a SIGKILL mid-save leaves it
    half.mkdir()
    (half / "config.json").write_text("{")
    r = run_cli("pretrain", str(corpus), "--out", str(run), "--steps", "9", "--save_every", "3",
                *ARGS, "--resume")
    assert r.returncode == 0, r.stderr
    assert "resuming from" in r.stdout and "step-0000006" in r.stdout
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-0000006", "step-0000009"]
