"""`jielong eval`'s speed-ups keep its numbers: questions scored in batches after their
subject's shared prefix give each choice the log-likelihood of a plain forward pass over
context+continuation (float32, questions of different lengths, choices of one to five tokens,
a windowed model too); bfloat16 picks the float32 choices, and `jielong eval` runs in it on a
CPU; two processes under torchrun write the same results and samples as one."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_corpus

from jielong import cli
from jielong.checkpoint import save_model
from jielong.config import preset
from jielong.eval.command import eval_cmd
from jielong.eval.loglikelihood import score_questions
from jielong.model import Transformer
from jielong.tokenizer import train_tokenizer


def whole_logprob(model, ctx: list[int], cont: list[int]) -> float:
    """The reference: context+continuation in one plain forward pass, as lm-eval runs it."""
    with torch.no_grad():
        logp = F.log_softmax(model(torch.tensor([ctx + cont]))[0].float(), -1)
    return sum(logp[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont))


def questions(vocab: int, n: int = 7) -> list[tuple[list[int], list[list[int]]]]:
    """n questions after one shared 9-token prefix: own parts of 1–12 tokens; choices that all
    begin with one token (as " A" after "答案：" may), or of their own, of 1–5 tokens."""
    rng = random.Random(0)
    prefix = [rng.randrange(vocab) for _ in range(9)]
    out = []
    for q in range(n):
        ctx = prefix + [rng.randrange(vocab) for _ in range(rng.randint(1, 12))]
        first = rng.randrange(vocab)
        conts = [([first] if q % 2 else []) + [rng.randrange(vocab) for _ in range(rng.randint(1, 4))]
                 for _ in range(4)]
        out.append((ctx, conts))
    return out


@pytest.mark.parametrize("windowed", [False, True])
def test_batched_scores_equal_whole_sequences(windowed):
    torch.manual_seed(0)
    extra = {"model_type": "mistral", "sliding_window": 8} if windowed else {}
    model = Transformer(preset("test", vocab_size=300, **extra)).eval()
    items = questions(300)
    want = [[whole_logprob(model, ctx, c) for c in conts] for ctx, conts in items]
    got = {}
    for batch_size in (3, 16):  # one question alone: test_benchmarks' shared-context test
        got[batch_size] = dict(score_questions(model, items, batch_size))
        assert sorted(got[batch_size]) == list(range(len(items)))
        worst = max(abs(a - b) for i, w in enumerate(want) for a, b in zip(got[batch_size][i], w, strict=True))
        assert worst <= 1e-5, (batch_size, worst)
    # a rank's share, batches 0 and 2 of 3: the same numbers, bit for bit, as in one process
    part = dict(score_questions(model, items, 3, take=lambda b: b != 1))
    assert len(part) == 4 and all(part[i] == got[3][i] for i in part)


def test_bfloat16_picks_the_float32_choices():
    torch.manual_seed(0)
    model = Transformer(preset("test", vocab_size=300)).eval()
    items = questions(300, n=12)
    f32 = dict(score_questions(model, items))
    b16 = dict(score_questions(model.to(torch.bfloat16), items))
    for i in range(len(items)):
        assert max(abs(a - b) for a, b in zip(f32[i], b16[i], strict=True)) < 0.15  # bf16: ~3 digits
        order = sorted(f32[i], reverse=True)
        if order[0] - order[1] > 0.3:  # a clear winner stays the winner
            assert b16[i].index(max(b16[i])) == f32[i].index(order[0])


ROWS = [("1+1等于几？", "一", "二", "三", "四", "B"), ("天空是什么颜色？", "红", "蓝", "绿", "黄", "B"),
        ("龍鄉在哪裡？", "北", "南", "東", "西", "C"), ("猫吃什么？", "鱼", "石头", "铁", "沙", "A"),
        ("The cat sat on the ___.", "mat", "河", "鹅", "书", "A"), ("书店里有很多什么？", "书", "猫", "河", "龙", "A"),
        ("12 + 345 = ?", "357", "356", "12", "345", "A")]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A CMMLU-layout folder (two subjects of 7 questions, each in another order) and a tiny model."""
    root = tmp_path_factory.mktemp("speed")
    for split in ("dev", "test"):
        for k, subject in enumerate(("agronomy", "anatomy")):
            rows = ROWS[k:] + ROWS[:k]
            f = root / "data" / "cmmlu" / split / f"{subject}.csv"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(",Question,A,B,C,D,Answer\n" + "".join(f'{i},"{r[0]}",{",".join(r[1:])}\n'
                                                                for i, r in enumerate(rows)), encoding="utf-8")
    tok = train_tokenizer(tiny_corpus(60) + ["答案： A\n答案： B 以下是关于农学的单项选择题"] * 5, vocab_size=300)
    torch.manual_seed(0)
    return root / "data", save_model(root / "model", Transformer(preset("test", vocab_size=tok.vocab_size)), tok)


def test_torchrun_two_processes_write_what_one_does(planted, tmp_path):
    data, model_dir = planted
    args = ["--tasks", "cmmlu", "--data", str(data), "--shots", "1", "--batch_size", "2", "--device", "cpu"]
    one = tmp_path / "one"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank runs
    try:
        eval_cmd(str(model_dir), tasks="cmmlu", data=str(data), out=str(one), shots=1, batch_size=2, device="cpu")
    finally:
        torch.set_num_threads(threads)
    two = tmp_path / "two"
    # --standalone: the rendezvous takes a free port, not the fixed default one
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "jielong.cli", "eval", str(model_dir), *args, "--out", str(two)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                       env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)})
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("cmmlu: acc") == 1  # rank 0 alone reports and writes

    def results(run):
        out = json.loads((run / "results.json").read_text(encoding="utf-8"))["tasks"]["cmmlu"]
        return {k: v for k, v in out.items() if k != "seconds"}
    assert results(two) == results(one) and results(one)["n"] == 14

    def samples(run):
        return [json.loads(line) for line in (run / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    for a, b in zip(samples(one), samples(two), strict=True):
        # the same sums in the same order; a BLAS may still round by memory alignment
        assert a.pop("logprobs") == pytest.approx(b.pop("logprobs"), abs=1e-6, rel=0)
        assert a == b


def test_a_batch_size_below_one_says_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["eval", str(tmp_path), "--tasks", "cmmlu", "--batch_size", "0", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err == "error: --batch_size 0: must be 1 or more"


def test_eval_runs_in_bfloat16(planted, tmp_path):
    data, model_dir = planted
    rows = {}
    for dtype in ("float32", "bfloat16"):
        eval_cmd(str(model_dir), tasks="cmmlu", data=str(data), out=str(tmp_path / dtype), shots=1,
                 device="cpu", dtype=dtype)
        text = (tmp_path / dtype / "samples.jsonl").read_text(encoding="utf-8")
        rows[dtype] = [json.loads(line) for line in text.splitlines()]
    for a, b in zip(rows["float32"], rows["bfloat16"], strict=True):
        assert a["logprobs"] != b["logprobs"]  # it did run in bfloat16
        assert a["logprobs"] == pytest.approx(b["logprobs"], abs=0.15, rel=0)
