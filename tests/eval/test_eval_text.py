"""`jielong eval --text`: held-out perplexity and bits per byte through the command line, the
same numbers as `heldout_text` on the loaded model, in results.json and report.md; and what
the command says when there is nothing to evaluate."""

import json

import pytest
import torch
from conftest import tiny_corpus

from jielong import cli
from jielong.checkpoint import load_model, save_model
from jielong.config import preset
from jielong.eval.heldout import heldout_text
from jielong.model import Transformer
from jielong.tokenizer import Tokenizer, train_tokenizer

DOCS = ["今天天氣很好，我們去河邊散步。阿明住在龍鄉，他養了一隻貓。",
        "The cat sat on the mat near the river, and Mei fed the goose.",
        "书店里有很多书。小华每天早上去公园跑步。" * 20]  # longer than the context: windows


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tok = train_tokenizer(tiny_corpus(80), vocab_size=350)
    torch.manual_seed(0)
    cfg = preset("test", vocab_size=tok.vocab_size, max_position_embeddings=64)
    return save_model(tmp_path_factory.mktemp("m") / "model", Transformer(cfg), tok)


def test_eval_text_reports_bits_per_byte(model_dir, tmp_path, capsys):
    held = tmp_path / "held.jsonl"
    held.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in DOCS),
                    encoding="utf-8")
    out = tmp_path / "eval"
    cli.main(["eval", str(model_dir), "--text", str(held), "--stride", "16", "--out", str(out),
              "--device", "cpu"])
    r = json.loads((out / "results.json").read_text())["text"]
    want = heldout_text(load_model(model_dir).eval(), Tokenizer.from_dir(model_dir), [held],
                        stride=16, device="cpu")
    assert r["documents"] == 3 and r["tokens"] == want.tokens
    assert r["bytes"] == sum(len(d.encode("utf-8")) for d in DOCS)
    assert r["bits_per_byte"] == pytest.approx(want.bits_per_byte, rel=1e-6)
    assert r["ppl"] == pytest.approx(want.ppl, rel=1e-6)
    assert 0 < r["bits_per_byte"] < 20  # a random model: about log2(vocab) bits per token
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "## Held-out text" in report and f"{r['bits_per_byte']:.4f}" in report
    assert "bits per byte" in capsys.readouterr().out


@pytest.mark.parametrize("extra, says", [
    ([], "nothing to evaluate: pass --tasks"),
    (["--text", "{empty}"], "corpus is empty"),
    (["--text", "{missing}"], "missing.jsonl"),
])
def test_eval_text_bad_input_is_one_line(model_dir, tmp_path, capsys, extra, says):
    (tmp_path / "empty.jsonl").write_text('{"text": ""}\n', encoding="utf-8")
    files = {"empty": str(tmp_path / "empty.jsonl"), "missing": str(tmp_path / "missing.jsonl")}
    with pytest.raises(SystemExit) as e:
        cli.main(["eval", str(model_dir), "--out", str(tmp_path / "o")]
                 + [a.format(**files) for a in extra])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("error: ") and "\n" not in err and says in err, err
