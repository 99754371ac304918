"""The quality rules as a step (`jielong.prep.quality_rules.QualityFilter`): planted bad
documents dropped for the right reason, good ones kept, boilerplate lines removed, per-language
thresholds and presets (`jielong.prep.thresholds`)."""


import pytest
from test_data_clean import (
    BAD_EN,
    BAD_ZH,
    EN_GOOD,
    ZH_HANS_GOOD,
    ZH_HANT_GOOD,
    doc,
    reasons,
    run_step,
)

from jielong.errors import UserError
from jielong.prep.language import detect_lang
from jielong.prep.quality_rules import QualityFilter, quality_reason
from jielong.prep.thresholds import LITERATURE_THRESHOLDS, QUALITY_THRESHOLDS


def test_quality_rules_drop_planted_bad_docs_and_keep_good_ones():
    f = QualityFilter()
    good = {"en": EN_GOOD, "zh_hant": ZH_HANT_GOOD, "zh_hans": ZH_HANS_GOOD}
    assert reasons(f, good) == {k: None for k in good}
    assert reasons(f, BAD_EN, lang="en") == {k: k for k in BAD_EN}
    assert reasons(f, BAD_ZH, lang="zh") == {k: k for k in BAD_ZH}
    # Keyword salad has too few common English words to be called English at all.
    assert detect_lang(BAD_EN["stop_words"]) == "other"
    assert reasons(f, {"cjk": "\n".join([ZH_HANT_GOOD, ZH_HANS_GOOD])}) == {"cjk": None}


def test_quality_removes_boilerplate_lines_and_takes_per_language_thresholds():
    f = QualityFilter()
    text = ("This website uses cookies to improve your experience.\n" + EN_GOOD
            + "\n請啟用 JavaScript 以瀏覽本網站\nPrivacy Policy | Terms of Use")
    kept, dropped = run_step(f, [doc(text, "a")])
    assert not dropped and kept[0].text == EN_GOOD and f.stats["boilerplate_lines"].total == 3
    # A discussion of JavaScript is not a banner.
    js = EN_GOOD + "\nJavaScript is the language of the web, and the browser runs it."
    assert f.filter(doc(js)) is True
    # Thresholds per language: a short Chinese poem passes once min_words is lowered.
    poem = "床前明月光，疑是地上霜。\n舉頭望明月，低頭思故鄉。\n這是李白在夜裡寫的詩，他在想家。"
    assert reasons(f, {"p": poem}) == {"p": "too_short"}
    relaxed = QualityFilter(lang_thresholds={"zh": {"min_words": 10, "max_newline_ratio": None}})
    assert reasons(relaxed, {"p": poem}) == {"p": None}
    assert relaxed.thresholds["en"] == QUALITY_THRESHOLDS["en"]
    ci = "明月幾時有？把酒問青天。\n不知天上宮闕，今夕是何年。\n我欲乘風歸去，又恐瓊樓玉宇，高處不勝寒。"
    assert reasons(f, {"c": ci}) == {"c": "too_short"}  # `--quality_preset literature`:
    assert reasons(QualityFilter(LITERATURE_THRESHOLDS), {"c": ci}) == {"c": None}
    assert QualityFilter(drop_curly_brackets=True).filter(doc(EN_GOOD + " {x}")) == (False, "curly_bracket")
    with pytest.raises(UserError, match="unknown settings"):
        QualityFilter(lang_thresholds={"zh": {"min_wordz": 1}})
    with pytest.raises(UserError, match="unknown language 'fr'"):
        QualityFilter(lang_thresholds={"fr": {}})
    assert quality_reason("", "en", QUALITY_THRESHOLDS["en"]) == "empty"
