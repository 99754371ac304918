"""Language and script (`jielong.prep.language`): zh/en/other by character classes,
Traditional and Simplified told apart, OpenCC conversion and the language filter."""


import pytest
from test_data_clean import (
    EN_GOOD,
    ZH_HANS_GOOD,
    ZH_HANT_GOOD,
    doc,
    run_step,
)

from jielong.errors import UserError
from jielong.prep.language import LanguageScript, detect_lang, han_script


def test_language_by_character_classes():
    assert detect_lang(EN_GOOD) == "en"
    assert detect_lang(ZH_HANT_GOOD) == "zh" and detect_lang(ZH_HANS_GOOD) == "zh"
    assert detect_lang("我們用 PyTorch 和 CUDA 訓練一個小模型。") == "zh"
    assert detect_lang("The poem 靜夜思 by Li Bai is about the moon.") == "en"
    assert detect_lang("今日はいい天気ですね。散歩に行きましょう。") == "other"  # Japanese: kana
    assert detect_lang("오늘 날씨가 좋네요") == "other"
    assert detect_lang("Le chat est assis sur le tapis près de la rivière et regarde les oiseaux.") == "other"
    assert detect_lang("Привет, как дела? Всё хорошо.") == "other"
    assert detect_lang("12345 !!! 67890") == "other"


def test_traditional_and_simplified_told_apart():
    assert han_script(ZH_HANT_GOOD)[0] == "Hant"
    assert han_script(ZH_HANS_GOOD)[0] == "Hans"
    assert han_script("子曰：「學而時習之，不亦說乎？」詩云：後來里台")[0] == "Hant"  # 云 里 台 are both
    assert han_script("天下大同")[0] == "mixed"  # no telling character
    assert han_script(ZH_HANT_GOOD + ZH_HANS_GOOD)[0] == "mixed"
    trad, simp = han_script("學習")[1:], han_script("学习")[1:]
    assert trad == (2, 0) and simp == (0, 2)


def test_language_script_step_converts_and_keeps():
    step = LanguageScript(convert="s2t", keep=["zh", "en"])
    docs = [doc(ZH_HANS_GOOD, "hans"), doc(ZH_HANT_GOOD, "hant"), doc(EN_GOOD, "en"),
            doc("今日はいい天気ですね。", "ja")]
    kept, dropped = run_step(step, docs)
    assert dropped == {"ja": None} and step.stats["dropped_lang_other"].total == 1
    hans, hant, en = kept
    assert hans.metadata == {"lang": "zh", "script": "Hans", "converted": "s2t"}
    assert hans.text.startswith("上海的秋天來得很晚。十月的街道上還是很熱") and han_script(hans.text)[0] == "Hant"
    assert hant.metadata == {"lang": "zh", "script": "Hant"} and hant.text == ZH_HANT_GOOD
    assert en.metadata == {"lang": "en"} and en.text == EN_GOOD
    # Taiwan's standard and back
    tw = list(LanguageScript(convert="s2tw")([doc("软件里面的头发", "s")]))[0]
    assert tw.text == "軟件裡面的頭髮" and tw.metadata["converted"] == "s2tw"
    back = list(LanguageScript(convert="tw2s")([doc("軟件裡面的頭髮", "t")]))[0]
    assert back.text == "软件里面的头发" and back.metadata["script"] == "Hant"
    t2s = list(LanguageScript(convert="t2s")([doc(ZH_HANT_GOOD, "t")]))[0]
    assert han_script(t2s.text)[0] == "Hans"
    with pytest.raises(UserError, match="unknown OpenCC conversion"):
        LanguageScript(convert="x2y")
    with pytest.raises(UserError, match="languages are zh, en, other"):
        LanguageScript(keep=["fr"])
