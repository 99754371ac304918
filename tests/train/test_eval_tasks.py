"""--eval_tasks: multiple-choice and generation tasks scored at every evaluation of a training
run, equal to `jielong eval` on the checkpoint of that step; a bad task stops the run before
any step."""

import json

import pytest
import torch
from conftest import tiny_corpus, write_jsonl

from jielong.checkpoint import save_model
from jielong.cli import run as cli
from jielong.config import preset
from jielong.errors import UserError
from jielong.eval.command import eval_cmd
from jielong.model import Transformer
from jielong.tokenizer import train_tokenizer

HEAD = "question,A,B,C,D,answer\n"
QUESTIONS = [("阿明的寵物是什麼？", "貓", "狗", "鵝", "魚", "A"), ("阿明住在哪里？", "龙乡", "枫林", "柳岸", "石桥", "A"),
             ("What does Mei keep?", "a cat", "a goose", "a dog", "a fish", "B"),
             ("7 + 5 = ?", "11", "12", "13", "14", "B"), ("書店裡有什麼？", "書", "貓", "河", "山", "A"),
             ("Where did the cat sit?", "on the mat", "in the river", "at school", "in town", "A"),
             ("今天天气怎么样？", "很好", "很冷", "下雨", "下雪", "A"), ("2 + 2 = ?", "3", "4", "5", "6", "B")]


def exam(folder, questions=QUESTIONS):
    """A task folder of one's own (TMMLU+'s header): 2 subjects, dev (shots) and test."""
    for subject, part in (("pets", questions[:4]), ("town", questions[4:])):
        for split, rows in (("dev", part[:1]), ("test", part)):
            (folder / f"{subject}_{split}.csv").parent.mkdir(parents=True, exist_ok=True)
            (folder / f"{subject}_{split}.csv").write_text(
                HEAD + "".join(",".join(r) + "\n" for r in rows), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaltasks")
    tok = train_tokenizer(tiny_corpus(200), vocab_size=400)
    torch.manual_seed(0)
    base = save_model(root / "base", Transformer(preset("test", vocab_size=tok.vocab_size)), tok)
    chats = write_jsonl(root / "chats.jsonl", [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": r[ord(r[-1]) - 64]}]}
        for q, *r in QUESTIONS * 4])
    return root, base, chats


def args(root, base, chats, out, *extra):
    return ["train", "sft", str(chats), "--model", str(base), "--out", str(root / out), "--steps", "8",
            "--batch_size", "4", "--lr", "1e-2", "--warmup_steps", "1", "--seq_len", "128",
            "--device", "cpu", *extra]


def test_tasks_scored_every_n_steps_equal_jielong_eval(setup, capsys):
    root, base, chats = setup
    task = exam(root / "exam")
    summary = cli(args(root, base, chats, "run", "--eval_tasks", str(task), "--eval_shots", "1",
                       "--eval_every", "4", "--save_every", "4", "--keep_checkpoints", "2"))
    rows = [json.loads(x) for x in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = {r["step"]: r["eval/exam/acc"] for r in rows if "eval/exam/acc" in r}
    assert sorted(logged) == [4, 8] and summary["eval/exam/acc"] == logged[8]
    for step, acc in logged.items():  # the same questions, prompts and scores as `jielong eval`
        ckpt = root / "run" / "checkpoints" / f"step-{step:07d}"
        r = eval_cmd(str(ckpt), tasks=str(task), shots=1, out=str(root / f"eval-{step}"), device="cpu")
        assert r["tasks"]["exam"]["acc"] == acc and r["tasks"]["exam"]["n"] == 8
    out = capsys.readouterr().out
    assert "eval tasks every 4 steps: exam (8 questions), 1-shot" in out
    assert f"eval tasks at step 8: exam acc {logged[8]:.4f}" in out


def test_generation_tasks_scored_during_training_equal_jielong_eval(setup, capsys):
    root, base, chats = setup
    qa = write_jsonl(root / "trivia.jsonl", [{"question": q, "answers": [r[ord(r[-1]) - 65]]}
                                             for q, *r in QUESTIONS[:3]])
    spec = f"{exam(root / 'exam')},closedbook:{qa}"
    summary = cli(args(root, base, chats, "gen", "--eval_tasks", spec, "--eval_shots", "0",
                       "--eval_every", "8", "--eval_limit", "2"))
    rows = [json.loads(x) for x in (root / "gen" / "metrics.jsonl").read_text().splitlines()]
    [logged] = [r for r in rows if "eval/closedbook:trivia/accuracy" in r]
    assert logged["step"] == 8 and {"eval/exam/acc", "eval/closedbook:trivia/refusal_rate",
                                    "eval/closedbook:trivia/hallucination_rate"} <= set(logged)
    r = eval_cmd(str(root / "gen" / "model"), tasks=spec, shots=0, limit=2, out=str(root / "gen-eval"),
                 device="cpu")
    cb = r["generate"]["closedbook:trivia"]
    assert cb["n"] == 2 and (cb["accuracy"], cb["refusal_rate"], cb["hallucination_rate"]) == (
        logged["eval/closedbook:trivia/accuracy"], logged["eval/closedbook:trivia/refusal_rate"],
        logged["eval/closedbook:trivia/hallucination_rate"])
    assert summary["eval/exam/acc"] == r["tasks"]["exam"]["acc"]
    out = capsys.readouterr().out
    assert "closedbook:trivia (2 questions, generated)" in out
    assert "closedbook:trivia hallucination_rate" in out


def test_a_bad_task_stops_the_run_before_any_step(setup):
    root, base, chats = setup
    with pytest.raises(UserError, match="unknown task 'nowhere'"):
        cli(args(root, base, chats, "bad1", "--eval_tasks", "nowhere"))
    bad = root / "bad_csv"
    bad.mkdir()
    (bad / "x_test.csv").write_text(HEAD + "q,a,b,c,d,E\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"x_test\.csv:2: answer 'E' is not one of the choices"):
        cli(args(root, base, chats, "bad2", "--eval_tasks", str(bad)))
    # a question longer than the model's context (256 tokens): found when encoded, still before step 1
    long = exam(root / "long", [("長" * 300, "a", "b", "c", "d", "A")] * 5)
    with pytest.raises(UserError, match=r"pets_test\.csv:2: with 0 shots the prompt takes \d+ tokens, more "
                                        "than the model's context of 256"):
        cli(args(root, base, chats, "bad3", "--eval_tasks", str(long), "--eval_shots", "0"))
    assert not any((root / f"bad{i}" / "metrics.jsonl").exists() for i in (1, 2, 3))
    with pytest.raises(UserError, match="missing.jsonl: no such file"):
        cli(args(root, base, chats, "bad5", "--eval_tasks", f"closedbook:{root / 'missing.jsonl'}"))
    with pytest.raises(UserError, match="--eval_limit=0 must be 1 or more"):
        cli(args(root, base, chats, "bad4", "--eval_tasks", str(root / "exam"), "--eval_limit", "0"))
