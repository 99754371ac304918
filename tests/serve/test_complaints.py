"""The complaint classifier (jielong.serve.complaints): the cases it is for in 繁/简/en,
precision and recall per script on held-out follow-ups it never trained on, a quick and
deterministic fit, the labelled files, and real questions (shared data) not taken for
complaints."""

from __future__ import annotations

import json
import time

import numpy as np

from jielong.serve.complaints import (
    SCRIPTS,
    TEXTS,
    THRESHOLD,
    ComplaintModel,
    complaint_probabilities,
    heldout_scores,
    labelled,
    model,
)

COMPLAINTS = ["不對，你答錯了", "我問的不是這個", "你在胡說八道", "你搞错了吧", "答非所问，你根本没看懂",
              "That's wrong.", "stupid bot", "You didn't answer my question."]
NOT_COMPLAINTS = ["不對稱加密是什麼？", "謝謝，答對了", "不錯，就是這樣", "那德國呢？", "不对称加密是什么？",
                  "没错，谢谢", "what's wrong with my code?", "Thanks, that's right.",
                  "Why is my code wrong?"]


def test_the_cases_it_is_for():
    for text, p in zip(COMPLAINTS, complaint_probabilities(COMPLAINTS), strict=True):
        assert p >= 0.7, (text, p)
    for text, p in zip(NOT_COMPLAINTS, complaint_probabilities(NOT_COMPLAINTS), strict=True):
        assert p < THRESHOLD, (text, p)


def test_heldout_precision_and_recall_per_script():
    scores = heldout_scores()
    for script in SCRIPTS:
        s = scores[script]
        assert s["n"] == 58 and s["tp"] + s["fn"] == 25, script
        assert s["precision"] >= 0.8 and s["recall"] >= 0.75, (script, s)
    assert scores["all"]["precision"] >= 0.85 and scores["all"]["recall"] >= 0.8, scores["all"]


def test_fit_is_quick_and_deterministic():
    rows = labelled("train")
    start = time.perf_counter()
    again = ComplaintModel.fit([t for _, _, t in rows], [y for y, _, _ in rows])
    assert time.perf_counter() - start < 2.0  # ~0.2 s on one core; a busy shared machine is slower
    assert again.vocab == model().vocab and np.array_equal(again.weights, model().weights)
    # Trained: the labelled follow-ups it learned from are nearly all on the right side.
    train_p = again.probabilities([t for _, _, t in rows])
    assert np.mean((train_p >= THRESHOLD) == np.array([y for y, _, _ in rows])) > 0.95


def test_labelled_files():
    train, held = labelled("train"), labelled("heldout")
    assert not {t for *_, t in train} & {t for *_, t in held}  # nothing held out was trained on
    for rows in (train, held):
        assert {(y, s) for y, s, _ in rows} == {(y, s) for y in (0, 1) for s in SCRIPTS}
    assert len(train) > 500 and TEXTS.name == "complaint_texts"


def test_real_questions_are_not_complaints(shared_data):
    questions = []
    for name in ("drcd-dev.json", "cmrc2018-dev.json"):
        data = json.loads((shared_data / name).read_text(encoding="utf-8"))["data"]
        questions += [qa["question"] for doc in data for par in doc["paragraphs"]
                      for qa in par["qas"]][:500]
    flagged = sum(p >= THRESHOLD for p in complaint_probabilities(questions))
    assert flagged <= 5, flagged  # measured: 4 of all 6,743 (bench/bench_complaints.py)
