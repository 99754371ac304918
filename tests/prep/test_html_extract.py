"""HTML to text (`jielong.prep.html_extract`): main text kept with its emoji and CJK
punctuation, scripts, navigation and footers gone, ZWJ emoji sequences whole."""


from test_data_clean import (
    PAGE,
    doc,
    run_step,
)

from jielong.prep.html_extract import HtmlExtract
from jielong.prep.normalize import normalize_text


def test_html_extract_keeps_emoji_and_punctuation_drops_scripts_and_nav():
    step = HtmlExtract()
    docs = [doc(PAGE, "page"),  # recognised by its text
            doc("<html><body><p>Hi 👋 there, friend!</p></body></html>", "flagged", format="html"),
            doc("<html><head><script>var x = 1;</script><style>p{}</style></head><body></body></html>",
                "empty"),
            doc("Use <b>bold</b> for emphasis in HTML.", "plain")]
    kept, dropped = run_step(step, docs)
    assert dropped == {"empty": None} and step.stats["dropped_no_text"].total == 1
    page, flagged, plain = kept
    assert page.text.splitlines()[0] == "台北美食地圖 🍜"
    for kept_text in ("（位於大安區），湯頭濃郁，麵條Q彈！老闆說：「我們每天熬湯十二小時。」你想試試嗎？",
                      "推薦給大家 😋👍", "“We make everything by hand.” 🙌"):
        assert kept_text in page.text
    for gone in ("tracker", "do-not-keep", "color", "popup", "關於我們", "登入", "隱私權政策"):
        assert gone not in page.text
    assert page.metadata == {"format": "text", "source_format": "html"}
    assert flagged.text == "Hi 👋 there, friend!"
    assert plain.text == "Use <b>bold</b> for emphasis in HTML." and plain.metadata == {}
    assert step.stats["html_extracted"].total == 2


FIRE_HEART, FAMILY = "\u2764\ufe0f\u200d\U0001f525", "\U0001f469\u200d\U0001f469\u200d\U0001f467"  # ❤️‍🔥 👩‍👩‍👧


def test_zwj_emoji_sequences_stay_whole_through_html_and_normalisation():
    text = f"今天的心情是{FIRE_HEART}，我們一家人{FAMILY}去海邊玩了一整天。"
    assert normalize_text(text) == text
    # trafilatura drops non-printable characters, ZWJ among them: written as a character and
    # as each kind of entity, it must come back whole.
    page = ("<!DOCTYPE html><html><body><article><p>" + text + "大家都很開心，晚上還吃了海鮮大餐。</p>"
            "<p>Family &#x1F469;&zwj;&#x1F469;&#8205;&#x1F467; and a fire heart "
            "&#x2764;&#xFE0F;&#x200D;&#x1F525; are two emoji that people use in messages every day.</p>"
            "</article></body></html>")
    out = list(HtmlExtract()([doc(page, "p")]))[0].text
    assert out.count(FIRE_HEART) == 2 and out.count(FAMILY) == 2, out
    assert "ZwJ" not in out and normalize_text(out) == out
