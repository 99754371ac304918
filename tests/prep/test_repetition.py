"""Repetition rules (`jielong.prep.repetition`) on a repeated Chinese advertorial."""

import dataclasses

from test_data_clean import (
    AD_HANT,
    EN_GOOD,
    ZH_HANS_GOOD,
    ZH_HANT_GOOD,
    doc,
    reasons,
    run_step,
)

from jielong.prep.language import detect_lang
from jielong.prep.repetition import RepetitionFilter, repetition_reason
from jielong.prep.thresholds import REPETITION_THRESHOLDS


def test_repetition_filter_on_a_repeated_chinese_advertorial():
    f = RepetitionFilter()
    intro = ZH_HANT_GOOD + "\n"
    texts = {
        "lines": intro + "\n".join([AD_HANT] * 12),             # the ad as 12 lines
        "paragraphs": "\n\n".join([ZH_HANS_GOOD, "歡迎訂閱！", ZH_HANT_GOOD, "歡迎訂閱！", "歡迎訂閱！"]),
        "one_line": intro + AD_HANT * 12,                       # one long line
        "phrase": intro + "，".join(["買一送一"] * 40) + "。",
        "en_spam": EN_GOOD + "\n" + " ".join(["Click here to buy now and save big"] * 20),
        "zh_hant": ZH_HANT_GOOD, "zh_hans": ZH_HANS_GOOD, "en": EN_GOOD,
        "quoted_twice": ZH_HANT_GOOD + "\n" + AD_HANT + "\n" + ZH_HANS_GOOD + "\n" + AD_HANT,
    }
    assert reasons(f, texts) == {
        "lines": "dup_lines",       # 12 of 15 lines repeat
        "paragraphs": "dup_paras",  # 2 of 5 paragraphs repeat, 2 of 9 lines, 3% of characters
        "one_line": "top_4gram",    # no lines to compare: the ad's commonest 4 words
        "phrase": "top_2gram",      # 買一 送一 covers most of the text
        "en_spam": "top_3gram",     # English n-grams are words
        "zh_hant": None, "zh_hans": None, "en": None, "quoted_twice": None}
    # Chinese n-grams are of jieba words, as FineWeb-2's: with only the 5-gram rules on, the
    # one-line ad is its repeated 5-grams.
    only_dup = dataclasses.replace(REPETITION_THRESHOLDS["zh"], top_ngrams=())
    assert repetition_reason(texts["one_line"], "zh", only_dup) == "dup_5gram"
    kept, dropped = run_step(f, [doc(t, k, lang=detect_lang(t)) for k, t in texts.items()])
    assert set(dropped) == {"lines", "paragraphs", "one_line", "phrase", "en_spam"}
    assert f.stats["dropped_dup_lines"].total == 1 and f.stats["dropped_top_4gram"].total == 1
