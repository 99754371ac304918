"""A user's mistake gets one clear line on stderr and exit code 2 — never a traceback —
and leaves no partial checkpoint behind."""

import json

import pytest
from conftest import run_cli, tiny_corpus

SMALL = ["--preset", "test", "--vocab_size", "300", "--seq_len", "16", "--steps", "2", "--device", "cpu"]


def one_line_error(r, *needles: str) -> str:
    err = r.stderr.strip()
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith("error: ")
    for n in needles:
        assert n in last, f"{n!r} not in {last!r}"
    return last


def write(path, text: str | bytes):
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def good(tmp_path):
    return write(tmp_path / "good.jsonl", "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n"
                                                  for d in tiny_corpus(60)))


@pytest.mark.parametrize("name, content, needles", [
    ("bad.jsonl", '{"text": "fine"}\n{"text": oops}\n', ["bad.jsonl:2", "JSON"]),
    ("field.jsonl", '{"text": "fine"}\n{"content": "x"}\n', ["field.jsonl:2", "text"]),
    ("latin1.txt", "caf\xe9 au lait".encode("latin-1"), ["latin1.txt", "UTF-8"]),
    ("empty.jsonl", "\n\n", ["empty"]),
])
def test_bad_corpus_files(tmp_path, name, content, needles):
    path = write(tmp_path / name, content)
    r = run_cli("pretrain", str(path), "--out", str(tmp_path / "run"), *SMALL)
    one_line_error(r, *needles)
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "model").exists()


def test_missing_corpus(tmp_path):
    one_line_error(run_cli("pretrain", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "r"), *SMALL),
                   "nope.jsonl")


def test_impossible_settings(tmp_path, good):
    out = str(tmp_path / "r")
    one_line_error(run_cli("pretrain", str(good), "--out", out, *SMALL[:2], "--vocab_size", "100"),
                   "vocab")
    one_line_error(run_cli("pretrain", str(good), "--out", out, *SMALL, "--seq_len", "4096"),
                   "--seq_len 4096", "context is 256 tokens")
    one_line_error(run_cli("pretrain", str(good), "--out", out, *SMALL, "--preset", "giant"), "preset")
    one_line_error(run_cli("pretrain", str(good), "--out", out, *SMALL, "--lr", "-1"), "--lr")
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_not_a_checkpoint_directory(tmp_path):
    one_line_error(run_cli("generate", "hi", "--model", str(tmp_path)), str(tmp_path))
    one_line_error(run_cli("generate", "hi", "--model", str(tmp_path / "missing")), "missing")


def test_prompt_longer_than_the_context(tmp_path, good):
    run = tmp_path / "r"
    assert run_cli("pretrain", str(good), "--out", str(run), *SMALL).returncode == 0
    r = run_cli("generate", "天氣 " * 400, "--model", str(run / "model"), "--max_tokens", "8")
    one_line_error(r, "context")


def test_bad_recipe(tmp_path, good):
    recipe = write(tmp_path / "r.yaml", "steps: 2\nbogus: 1\n")
    one_line_error(run_cli("pretrain", str(good), "--config", str(recipe)), "bogus")
    write(recipe, "steps: [1\n")
    one_line_error(run_cli("pretrain", str(good), "--config", str(recipe)), "r.yaml")
