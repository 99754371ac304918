"""Classification metrics against a hand computation, and their terminal table."""

import pytest

from jielong.eval.classification import classification_report, format_report


def test_classification_report_exact():
    y_true = ["a", "a", "a", "b", "b", "c"]
    y_pred = ["a", "a", "b", "b", "c", "a"]
    r = classification_report(y_true, y_pred, ["a", "b", "c"])
    assert r["confusion"] == [[2, 1, 0], [0, 1, 1], [1, 0, 0]]
    assert r["accuracy"] == 3 / 6
    a, b, c = (r["per_class"][k] for k in "abc")
    assert (a["precision"], a["recall"], a["f1"], a["support"]) == (2 / 3, 2 / 3, 2 * (4 / 9) / (4 / 3), 3)
    assert (b["precision"], b["recall"], b["f1"], b["support"]) == (1 / 2, 1 / 2, 2 * (1 / 4) / 1, 2)
    assert (c["precision"], c["recall"], c["f1"], c["support"]) == (0.0, 0.0, 0.0, 1)
    assert r["macro"]["precision"] == pytest.approx((2 / 3 + 1 / 2) / 3, abs=0)
    assert r["macro"]["recall"] == pytest.approx((2 / 3 + 1 / 2) / 3, abs=0)
    assert r["macro"]["f1"] == pytest.approx((2 / 3 + 1 / 2) / 3, abs=0)
    assert r["weighted"]["f1"] == pytest.approx((3 * 2 / 3 + 2 * 1 / 2) / 6, abs=0)
    plain = format_report(r, color=False)
    assert "\033" not in plain and "macro avg" in plain and "0.667" in plain
    assert "\033[" in format_report(r, color=True)
