"""`jielong score`: a file of single replies, pairs and rankings scored by a trained reward
model, as JSON lines and as a table, one prompt and reply, and a bad row as one line."""

import json

import pytest
from conftest import run_cli, write_jsonl
from polite_pairs import polite_tokenizer, train_polite_reward


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny reward model trained on the polite-request preference: (run dir, summary, data)."""
    return train_polite_reward(tmp_path_factory.mktemp("reward"), polite_tokenizer())


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
