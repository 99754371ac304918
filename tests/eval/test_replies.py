"""Reply metrics: chrF and answer matching."""

import pytest

from jielong.eval.replies import chrf, contains_answer


def test_chrf():
    assert chrf("阿明的寵物是貓。", "阿明的寵物是貓。") == pytest.approx(100)
    assert chrf("abc", "xyz") == 0
    assert chrf("", "abc") == 0
    near = chrf("Ming's pet is a cat.", "Ming's pet is a dog.")
    assert 50 < near < 100
    # recall counts more than precision (beta = 2): a short correct prefix scores low
    assert chrf("Ming", "Ming's pet is a cat.") < chrf("Ming's pet is a cat. Yes indeed it is.",
                                                      "Ming's pet is a cat.")


def test_contains_answer():
    assert contains_answer("阿明的寵物是 貓。", "貓")
    assert contains_answer("Ming keeps a CAT.", "cat")
    assert not contains_answer("Ming keeps a dog.", "cat")
