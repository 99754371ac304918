"""What a new user tripped over in their first hour (issue 14), each through the CLI in a
subprocess, as they typed it: lengths that default to the model's context and are checked
before any slow work, a mistyped option, a list option on the command line, escapes in
prompts, and JSON errors that read well."""

import json

import pytest
from conftest import bot, run_cli, tiny_corpus, user, write_jsonl
from test_cli_errors import one_line_error

from jielong.infer.generate import unescape

CONTEXT = 256  # the "test" preset's max_position_embeddings
PRETRAIN = ["--preset", "test", "--vocab_size", "300", "--seq_len", "32", "--steps", "2",
            "--device", "cpu"]
QUICK = ["--steps", "2", "--batch_size", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A model whose context (256) is shorter than every stage's old default length (1024)."""
    tmp = tmp_path_factory.mktemp("base")
    corpus = write_jsonl(tmp / "c.jsonl", [{"text": d} for d in tiny_corpus(60)])
    r = run_cli("pretrain", str(corpus), "--out", str(tmp / "run"), *PRETRAIN)
    assert r.returncode == 0, r.stderr
    return tmp / "run" / "model"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("files")
    qa = [("阿明住在哪裡？", "阿明住在龍鄉。"), ("阿明住在哪里？", "阿明住在龙乡。"),
          ("Where does Ming live?", "Ming lives in Dragon town.")]
    chats = [{"messages": [user(q), bot(a)]} for q, a in qa * 8]
    return {
        "chats": write_jsonl(tmp / "chats.jsonl", chats),
        "spam": write_jsonl(tmp / "spam.jsonl", [{"text": t, "label": lab} for t, lab in
                                                 [("免費中獎，立即點擊", "spam"), ("明天開會", "ham"),
                                                  ("win a free prize now", "spam"), ("lunch at noon?", "ham")] * 6]),
        "prefs": write_jsonl(tmp / "prefs.jsonl", [{"prompt": q, "chosen": a, "rejected": "不知道。"}
                                                   for q, a in qa * 6]),
        "ratings": write_jsonl(tmp / "ratings.jsonl", [{"prompt": q, "completion": a, "label": i % 2 == 0}
                                                       for i, (q, a) in enumerate(qa * 6)]),
        "prompts": write_jsonl(tmp / "prompts.jsonl", [{"prompt": q} for q, _ in qa * 4]),
    }


def test_readme_lora_command_on_a_short_context_model(tmp_path, base, files):
    """The README's LoRA line crashed on a demo-preset model: --seq_len defaulted to 1024."""
    out = tmp_path / "sft"
    r = run_cli("train", "sft", str(files["chats"]), "--model", str(base), "--out", str(out),
                "--method", "lora", "--r", "16", "--alpha", "32", "--target_modules", "q_proj", "v_proj",
                *QUICK)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"rows of {CONTEXT}" in r.stdout
    # A list given on the command line replaces the default, it does not add to it.
    cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert sorted(cfg["target_modules"]) == ["q_proj", "v_proj"]


def test_peft_all_linear_on_the_command_line(tmp_path, base, files):
    out = tmp_path / "sft"
    r = run_cli("train", "sft", str(files["chats"]), "--model", str(base), "--out", str(out),
                "--method", "lora", "--target_modules", "all-linear", *QUICK)
    assert r.returncode == 0, r.stderr[-2000:]
    cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert sorted(cfg["target_modules"]) == sorted(["q_proj", "k_proj", "v_proj", "o_proj",
                                                    "gate_proj", "up_proj", "down_proj"])


@pytest.mark.parametrize("stage, data, option", [
    (["train", "sft"], "chats", "--seq_len"),
    (["train", "classify"], "spam", "--max_len"),
    (["train", "distill"], "chats", "--seq_len"),
    (["train", "reward"], "prefs", "--max_len"),
    (["train", "dpo"], "prefs", "--max_len"),
    (["train", "kto"], "ratings", "--max_len"),
])
def test_every_stage_checks_its_length_against_the_context(tmp_path, base, files, stage, data, option):
    args = [*stage, str(files[data])]
    args += [str(base), "--student_layers", "0"] if stage[1] == "distill" else ["--model", str(base)]
    out = tmp_path / "run"
    r = run_cli(*args, "--out", str(out), option, "1024", *QUICK)
    one_line_error(r, f"{option} 1024", f"context is {CONTEXT} tokens")
    assert not (out / "checkpoints").exists()


def test_classify_and_distill_default_to_the_context(tmp_path, base, files):
    r = run_cli("train", "classify", str(files["spam"]), "--model", str(base), "--out",
                str(tmp_path / "c"), *QUICK)
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_cli("train", "distill", str(files["chats"]), str(base), "--student_layers", "0",
                "--out", str(tmp_path / "d"), *QUICK)
    assert r.returncode == 0, r.stderr[-2000:]


def test_rlhf_reply_longer_than_the_context(tmp_path, base, files):
    r = run_cli("train", "rlhf", str(files["prompts"]), "--model", str(base), "--out",
                str(tmp_path / "rl"), "--reward_fn", "length", "--max_new_tokens", "1024", *QUICK)
    one_line_error(r, "--max_new_tokens 1024", "context")


def test_a_mistyped_option_shows_the_commands_own_usage(tmp_path, files):
    r = run_cli("train", "sft", str(files["chats"]), "--seqlen", "128")
    assert r.returncode == 2
    assert "usage: jielong train sft" in r.stderr
    assert "did you mean --seq_len?" in r.stderr.splitlines()[-1]
    assert "Traceback" not in r.stderr


def test_list_options_extend_each_other_but_replace_the_default():
    from jielong.cli import run

    def cmd(stop: list[str] | None = None, keep: list[str] = ["a", "b"]):  # noqa: B006
        """Args:
            stop: Stops.
            keep: Kept.
        """
        return stop, keep

    table = {"x": cmd}
    assert run(["x"], table) == (None, ["a", "b"])
    assert run(["x", "--keep", "c"], table) == (None, ["c"])
    assert run(["x", "--keep", "c", "d", "--keep", "e", "--stop", "s"], table) == (["s"], ["c", "d", "e"])


def test_escapes_mean_the_same_in_prompts_and_stops(base):
    assert unescape(r"Q: hi\nA:") == "Q: hi\nA:"
    assert unescape(r"a\tb") == "a\tb"
    assert unescape(r"C:\\new") == "C:\\new"  # \\ keeps a backslash that precedes n
    assert unescape(r"\d+ 天氣") == r"\d+ 天氣"  # anything else stays as typed
    r = run_cli("generate", r"第一行\n", "--model", str(base), "--temperature", "0", "--max_tokens", "2")
    assert r.returncode == 0, r.stderr
    assert "第一行\n" in r.stdout and r"第一行\n" not in r.stdout
    help_ = run_cli("generate", "--help").stdout
    assert r"\n is a" in " ".join(help_.split())


@pytest.mark.parametrize("line", ['{"text": "unterminated}', '{"text": "tab\there"}'])
def test_json_errors_do_not_say_at_at(tmp_path, line):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n' + line + "\n", encoding="utf-8")
    r = run_cli("pretrain", str(path), "--out", str(tmp_path / "r"), *PRETRAIN)
    last = one_line_error(r, "bad.jsonl:2", "at column")
    assert "at at" not in last


@pytest.mark.parametrize("command", [["generate", "hi"], ["train", "sft", "chats.jsonl"],
                                     ["chat"], ["serve"]])
def test_the_default_model_before_the_demo_has_run(tmp_path, command):
    """Commands default to the demo's models; before `jielong demo` they say so."""
    r = run_cli(*command, cwd=tmp_path)
    one_line_error(r, "runs/demo/", "run `jielong demo` first, or pass --model")


def test_json_problem_reads_well():
    from jielong.errors import json_problem

    for bad in ('{"a": "unterminated', '{"a": "tab\there"}', '{"a": 1,}', "[1 2]"):
        with pytest.raises(json.JSONDecodeError) as e:
            json.loads(bad)
        text = json_problem(e.value)
        assert "at at" not in text and text.endswith(f"at column {e.value.colno}")
