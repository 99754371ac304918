"""The power-law fit against known exponents, the grid parser, and a two-point sweep."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import tiny_corpus

from jielong.errors import UserError
from jielong.inspect.sweep import compute_frontier, fit_power_law, parse_grid, parse_steps, sweep


def test_pure_power_law_is_recovered_exactly():
    C = np.geomspace(1e8, 1e14, 7)
    law = fit_power_law(C, 40.0 * C ** -0.12, c=0.0)
    assert law.b == pytest.approx(0.12, rel=1e-9) and law.a == pytest.approx(40.0, rel=1e-9)
    assert law.c == 0 and law.rss < 1e-20


def test_offset_power_law_is_recovered_with_and_without_noise():
    C = np.geomspace(1e6, 1e12, 12)
    L = 30.0 * C ** -0.25 + 1.5
    law = fit_power_law(C, L)
    assert (law.a, law.b, law.c) == pytest.approx((30.0, 0.25, 1.5), rel=2e-3)
    noisy = L * (1 + 0.003 * np.random.default_rng(0).standard_normal(len(C)))
    law = fit_power_law(C, noisy)
    assert law.b == pytest.approx(0.25, abs=0.03) and law.c == pytest.approx(1.5, abs=0.1)
    # the pure form on data with a floor bends to a smaller exponent: the offset matters
    assert fit_power_law(C, L, c=0.0).b < 0.2
    with pytest.raises(UserError, match="below every loss"):
        fit_power_law(C, L, c=2.0)


def test_grid_and_steps_parse_or_name_the_fix():
    assert parse_grid("n_layer=1,2; hidden=32,64;lr=1e-3,3e-3;schedule=cosine") == {
        "num_hidden_layers": [1, 2], "hidden_size": [32, 64], "lr": [0.001, 0.003],
        "schedule": ["cosine"]}
    assert parse_steps("50, 100") == [50, 100]
    for bad, msg in (("n_layer", "no '='"), ("depth=2", "unknown key 'depth'"),
                     ("steps=5", "--steps"), ("lr=1,;", "empty value"), ("lr=1;lr=2", "twice")):
        with pytest.raises(UserError, match=msg):
            parse_grid(bad)
    with pytest.raises(UserError, match="positive"):
        parse_steps("0")


def test_frontier_keeps_only_runs_nothing_cheaper_beats():
    runs = [{"compute": 1, "val_loss": 5}, {"compute": 2, "val_loss": 6}, {"compute": 3, "val_loss": 4}]
    assert [r["compute"] for r in compute_frontier(runs)] == [1, 3]


def test_two_point_sweep_end_to_end(tmp_path):
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n"
                              for d in tiny_corpus(80)), encoding="utf-8")
    out = tmp_path / "sweep"
    result = sweep([str(corpus)], out=str(out), preset="test", grid="n_layer=1,2;hidden=32",
                   steps="4", vocab_size=300, seq_len=16, batch_size=4, warmup_steps=1,
                   device="cpu", val_fraction=0.1)
    runs = result["runs"]
    assert [r["num_hidden_layers"] for r in runs] == [1, 2]
    # 6·N·D by hand: N per layer for width 32 (intermediate 96, 4 heads of 8, 2 kv heads) + final norm
    per_layer = 32 * 32 + 2 * 32 * 16 + 32 * 32 + 3 * 32 * 96 + 2 * 32
    for r in runs:
        assert r["tokens"] == 4 * 4 * 16
        assert r["non_embedding_params"] == r["num_hidden_layers"] * per_layer + 32
        assert r["compute"] == 6 * r["non_embedding_params"] * r["tokens"]
        assert 0 < r["val_loss"] < 7
    saved = json.loads((out / "sweep.json").read_text())
    assert saved["fit"]["points"] == "all" and saved["fit"]["b"] == pytest.approx(fit_power_law(
        [r["compute"] for r in runs], [r["val_loss"] for r in runs], c=0.0).b)
    for png in ("loss_vs_compute.png", "loss_vs_num_hidden_layers.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    again = sweep([str(corpus)], out=str(out), preset="test", grid="n_layer=1,2;hidden=32",
                  steps="4", vocab_size=300, seq_len=16, batch_size=4, device="cpu", val_fraction=0.1)
    assert again["runs"] == runs  # done points are reused, not retrained
