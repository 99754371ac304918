"""The per-document cleaning steps on small planted corpora (English, Traditional and
Simplified Chinese): HTML extraction, normalisation, language and script, quality and
repetition rules, the harmful-content lexicon (and a tiny trained classifier), all of them
inside a datatrove executor, and a slice of real text from ../shared/data when present."""

import dataclasses
import gzip
import json
import random
from pathlib import Path

import pytest
from datatrove.data import Document
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.writers import JsonlWriter

from jielong.errors import UserError
from jielong.prep.harmful import HarmfulFilter, Lexicon
from jielong.prep.html_extract import HtmlExtract
from jielong.prep.language import LanguageScript, detect_lang, han_script
from jielong.prep.normalize import Normalize, normalize_text
from jielong.prep.quality_rules import QualityFilter, quality_reason
from jielong.prep.redact import PiiRedact
from jielong.prep.repetition import RepetitionFilter, repetition_reason
from jielong.prep.thresholds import LITERATURE_THRESHOLDS, QUALITY_THRESHOLDS, REPETITION_THRESHOLDS

EN_GOOD = (
    "The river town of Maple sits at the foot of a small mountain. Every morning the baker "
    "opens her shop before the sun rises, and the smell of fresh bread drifts down to the water.\n"
    "Children walk to school along the old stone bridge, and they stop to watch the ducks that "
    "have made their home beneath it. In the afternoon the market fills with farmers who bring "
    "apples, cheese and honey from the valley.\n"
    "Visitors often say that the town feels slower than the city, and that is exactly why the "
    "people who live there love it. They have time to talk with their neighbours, to read, and "
    "to walk by the river with their dogs.")
ZH_HANT_GOOD = (
    "台北的早晨總是從一杯熱豆漿開始。巷口的早餐店在天還沒亮的時候就已經開門了，老闆熟練地煎著蛋餅，"
    "客人排隊等著外帶。\n"
    "上班的人匆匆走過騎樓，學生背著書包趕公車。雖然城市的生活節奏很快，但是人們還是願意花一點時間"
    "和鄰居打招呼，聊聊昨天的新聞。\n"
    "到了週末，很多家庭會去河濱公園騎腳踏車，或是在附近的山上散步。對許多人來說，這就是這座城市"
    "最可愛的地方。")
ZH_HANS_GOOD = (
    "上海的秋天来得很晚。十月的街道上还是很热，人们穿着短袖在弄堂里乘凉，小孩子在门口跳绳。\n"
    "到了傍晚，菜市场里挤满了下班的人。阿姨们一边挑着青菜，一边和摊主讨价还价，"
    "空气里飘着葱油饼的香味。\n"
    "虽然城市变化很快，高楼一栋接着一栋地盖起来，但是老街坊之间的感情没有变。"
    "大家见面的时候还是会问一句：吃过饭了吗？")


def doc(text, id="d", **metadata):
    return Document(text=text, id=id, metadata=dict(metadata))


def run_step(step, docs):
    """(kept documents, {id: drop reason}) of one step run on `docs`."""
    docs = list(docs)
    kept = list(step(docs))
    ids = {d.id for d in kept}
    return kept, {d.id: d.metadata.get("filter_reason") for d in docs if d.id not in ids}


def reasons(step, texts: dict[str, str], lang: str | None = None):
    """{name: reason or None} for each text, by calling the filter directly (with
    metadata["lang"] = `lang` when given, as LanguageScript would have set it)."""
    out = {}
    for name, text in texts.items():
        r = step.filter(doc(text, name, **({"lang": lang} if lang else {})))
        out[name] = None if r is True else r[1]
    return out


# ------------------------------------------------------------------------------- HTML


PAGE = """<!DOCTYPE html>
<html><head><title>台北美食</title><style>body { color: red }</style>
<script>var tracker = "do-not-keep";</script></head>
<body><nav><a href="/">首頁</a> | <a href="/about">關於我們</a> | <a href="/login">登入</a></nav>
<article><h1>台北美食地圖 🍜</h1>
<p>今天我們去了一家很棒的牛肉麵店（位於大安區），湯頭濃郁，麵條Q彈！老闆說：「我們每天熬湯十二小時。」你想試試嗎？</p>
<p>價格也很實惠：一碗只要一百五十元。推薦給大家 😋👍</p>
<p>The owner's daughter told us, “We make everything by hand.” 🙌</p></article>
<footer>Copyright 2024 · 隱私權政策 · 使用條款</footer>
<script>alert("popup")</script></body></html>"""


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


# -------------------------------------------------------------------------- Normalize


def test_normalize_keeps_full_width_punctuation_and_emoji():
    punct = "（），。！？：；「」『』、《》“中文引號”‘單引號’ＡＢＣ１２３"
    assert normalize_text(punct) == punct  # ftfy's defaults would make these ASCII
    messy = ("\ufeff  第一段：　你好（測試）！\x07\u200b  \r\n\r\n\r\n\r\n"
             "Hello    world\t\tagain   \n"
             "mojibake: cafÃ© â€œquotedâ€\x9d and &amp; entity\n"
             "e\u0301 composed, 👩\u200d💻 ❤\ufe0f 🇹🇼 kept\n\n\n")
    assert normalize_text(messy) == (
        "  第一段：　你好（測試）！\n\n"
        "Hello world again\n"
        "mojibake: café “quoted” and & entity\n"
        "é composed, 👩\u200d💻 ❤\ufe0f 🇹🇼 kept")
    out = list(Normalize()([doc("（好）  ！\n\n\n\n結束。")]))
    assert out[0].text == "（好） ！\n\n結束。"


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


# --------------------------------------------------------------------- LanguageScript


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


# ---------------------------------------------------------------------- QualityFilter


BAD_EN = {
    "too_short": "Hello there. This is short.",
    "bullet_lines": "\n".join(f"• Fast shipping and free returns on item {i}" for i in range(20)),
    "ellipsis_lines": "\n".join(
        f"And then the wind came to the door of house number {i} and..." if i % 2 else
        f"The people in house {i} waited with the lights on, hoping for the best." for i in range(12)),
    "symbol_ratio": " ".join(f"#deal{i} #sale the best price" for i in range(30)),
    "lorem_ipsum": EN_GOOD + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit.",
    "alpha_words": "The figures for the year and the quarter are below.\n" + "\n".join(
        " ".join(str(1000 + 37 * i + j) for j in range(8)) for i in range(12)),
    "stop_words": " ".join(["cheap", "shoes", "buy", "online", "discount", "sneakers", "sale",
                            "boots", "free", "shipping"] * 7) + ".",
    "line_punct": "\n".join(f"Home and the Products page {i} Services Blog Contact us" for i in range(14)),
    "newline_ratio": "\n".join(f"Buy the {w}." for w in (
        "apples pears plums grapes lemons limes melons mangoes cherries peaches berries figs dates "
        "kiwis onions leeks beans peas carrots turnips").split()),
}
BAD_ZH = {
    "too_short": "今天天氣很好。",
    "stop_words": " ".join(["減肥茶", "瘦身", "推薦", "優惠", "團購", "折扣", "免運", "現貨", "熱銷",
                            "排行"] * 6) + "。",
    "alpha_words": "本季營收數字如下：\n" + "\n".join(
        "，".join(f"{1000 + 37 * i + j}" for j in range(8)) + "。" for i in range(10)),
    "newline_ratio": "\n".join(f"買了{w}。" for w in "蘋果 香蕉 橘子 葡萄 西瓜 芒果 鳳梨 草莓 檸檬 櫻桃 "
                               "番茄 黃瓜 茄子 白菜 菠菜 芹菜 洋蔥 大蒜 生薑 辣椒".split()),
    "symbol_ratio": "\n".join(f"她說她今天在家裡{w}了很久……" for w in "想 等 哭 笑 寫 讀 睡 坐 站 走".split()),
    "line_punct": "\n".join(f"首頁 的 產品 目錄 第{i}頁 服務 部落格 聯絡 我們 是 購物車" for i in range(10)),
    "bullet_lines": "\n".join(f"・今天的第{i}項優惠是全館商品免運費" for i in range(15)),
    "ellipsis_lines": "\n".join(f"她在第{i}天的晚上說了很多話。。。" if i % 2 else
                                 f"他在第{i}天的早上去了市場買菜。" for i in range(12)),
}


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


# ------------------------------------------------------------------- RepetitionFilter


AD_HANT = "限時優惠！全館商品買一送一，立即下單還送精美好禮，數量有限，售完為止。"
AD_HANS = "好消息！本店所有商品一律五折，关注公众号再送优惠券，机会难得，欢迎抢购。"


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


# ----------------------------------------------------------------------- HarmfulFilter


HARMFUL = {
    "en_sexual": ("Watch free porn videos every day: hot milf and hentai clips, nudes and more.",
                  "harmful_sexual"),
    "en_violence": ("He threatened to behead the hostages, and the video of the bloodbath and the "
                    "massacre spread online.", "harmful_violence"),
    "en_self_harm": ("I want to die. Please tell me how to commit suicide and which suicide methods "
                     "work.", "harmful_self_harm"),
    "en_hate": ("They are subhuman, they belong to no master race, so go back to your country.",
                "harmful_hate"),
    "hant_sexual": ("免費色情影片天天更新，無碼女優直播，還能約炮一夜情。", "harmful_sexual"),
    "hans_violence": ("他在网上扬言要杀了你，还说要枪杀人质并且斩首示众。", "harmful_violence"),
    "hant_self_harm": ("我真的不想活了，一直在查自殺方法，甚至想去燒炭。", "harmful_self_harm"),
    "hans_hate": ("那些支那人都是劣等民族，通通滚回你的国家去。", "harmful_hate"),
    "hant_sexual_dense": ("色情片！色情網站！裸聊！", "harmful_sexual"),  # two terms, dense
}
ALLOWED = {
    "en": ("Breast cancer screening saves lives. Sex education starts early in Essex and in "
           "Scunthorpe. My Gore-Tex jacket kept me dry, and the chicken breast was tasty. "
           "We studied the analysis of cocktail recipes."),
    "hant": ("我們公司專營出口交易，也舉辦異性交往講座；媽媽早上做愛心便當。乳癌篩檢很重要，性別平等"
             "也很重要。這款洗手乳能殺菌，也能殺死細菌。殺人鯨其實是海豚。我好想死你了！"
             "印度支那半島的歷史很長。"),
    "hans": ("今年出口交易额增长，学校开设异性交往课程，妈妈做爱心早餐，乳癌筛查，杀死细菌的药，"
             "想死你了。"),
    "news": (EN_GOOD + " Historians still study the massacre of 1572, which the town remembers "
             "every year with a quiet walk along the river."),
}


def test_harmful_lexicon_drops_planted_text_and_keeps_allow_listed_words():
    f = HarmfulFilter()
    got = reasons(f, {k: v[0] for k, v in HARMFUL.items()})
    assert got == {k: v[1] for k, v in HARMFUL.items()}
    docs = [doc(t, k) for k, (t, _) in HARMFUL.items()] + [doc(t, k) for k, t in ALLOWED.items()]
    kept, dropped = run_step(f, docs)
    assert sorted(dropped) == sorted(HARMFUL)
    assert [d.metadata.get("harmful") for d in kept] == [None, None, None, {"violence": ["massacre*"]}]
    # One term, however dense, decides nothing alone.
    assert f.filter(doc("Massacre! massacre, massacre.")) is True
    assert f.stats["dropped_harmful_sexual"].total == 3 and f.stats["forwarded"].total == 4


def test_lexicon_matching_details():
    lex = Lexicon.load()
    assert set(lex.terms) == {"sexual", "violence", "hate", "self_harm"}
    # Terms are found in either script and named as written in the file.
    assert lex.hits("做爱")["sexual"] == {"做愛": 1}
    assert lex.hits("做愛")["sexual"] == {"做愛": 1}
    # English needs word boundaries; spaces/hyphens are flexible; * takes endings.
    assert lex.hits("Essex, Sussex, scunthorpe, therapist") == {}
    assert lex.hits("BLOW-JOB blowjob Blow Job")["sexual"] == {"blow job": 3}
    assert lex.hits("masturbating")["sexual"] == {"masturbat*": 1}
    # The allow-list is what keeps 出口交易 (export trade) from counting as 口交.
    assert Lexicon({"sexual": ["口交"]}, []).hits("出口交易") == {"sexual": {"口交": 1}}
    assert Lexicon({"sexual": ["口交"]}, ["出口交"]).hits("出口交易") == {}
    assert lex.hits("出口交易；口交")["sexual"] == {"口交": 1}
    # Full-width Latin letters are folded (NFKC) before matching.
    assert lex.hits("ＰＯＲＮ")["sexual"] == {"porn*": 1}
    # Only the selected categories.
    only = HarmfulFilter(categories=["hate"])
    assert only.filter(doc(HARMFUL["en_sexual"][0])) is True
    with pytest.raises(UserError, match="not in the lexicon"):
        HarmfulFilter(categories=["spam"])


def test_custom_lexicon_directory(tmp_path):
    (tmp_path / "spam.txt").write_text("# spam\nclick here\n免費領取\n", encoding="utf-8")
    (tmp_path / "allow.txt").write_text("click here to unsubscribe\n", encoding="utf-8")
    f = HarmfulFilter(lexicon_dir=str(tmp_path), min_terms=2)
    assert f.filter(doc("Click here! 免费领取大奖！")) == (False, "harmful_spam")
    assert f.filter(doc("To stop these mails, click here to unsubscribe. Thanks for reading.")) is True


def test_harmful_classifier_from_jielong_train_classify(tmp_path):
    import torch

    from jielong.checkpoint import save_model
    from jielong.config import preset
    from jielong.model import Transformer
    from jielong.tokenizer import train_tokenizer
    from jielong.train.classify import classify
    from jielong.train.loop import TrainConfig

    # Threats no lexicon term covers: only the classifier can catch them.
    bad = ["we will hurt them badly", "burn their houses down", "讓他們付出血的代價",
           "让他们付出血的代价", "break every bone they have"]
    good = ["the garden is lovely today", "今天天氣很好", "今天天气很好", "the river is calm",
            "我們去公園散步"]
    tok = train_tokenizer((bad + good) * 3, vocab_size=300)
    cfg = preset("test", vocab_size=tok.vocab_size, eos_token_id=tok.eos_id, pad_token_id=tok.eos_id)
    torch.manual_seed(0)
    base = save_model(tmp_path / "base", Transformer(cfg), tok)
    rows = [{"text": t, "label": "violence"} for t in bad] + [{"text": t, "label": "safe"} for t in good]
    random.Random(0).shuffle(rows)
    data = tmp_path / "harm.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    train = TrainConfig(steps=30, batch_size=8, lr=3e-3, warmup_steps=2, eval_every=1000,
                        save_every=1000, device="cpu", seed=0)
    classify(str(data), model=str(base), out=str(tmp_path / "run"), val_fraction=0, max_len=32,
             train=train)
    f = HarmfulFilter(classifier=str(tmp_path / "run" / "model"), threshold=0.5)
    docs = [doc(t, f"b{i}") for i, t in enumerate(bad)] + [doc(t, f"g{i}") for i, t in enumerate(good)]
    kept, dropped = run_step(f, docs)
    assert sorted(dropped) == [f"b{i}" for i in range(5)]
    assert f.stats["dropped_harmful_violence"].total == 5
    assert all(d.metadata["harmful_score"] < 0.5 for d in kept)
    assert "harmful" not in docs[0].metadata  # the lexicon saw nothing: the classifier decided
    with pytest.raises(UserError, match="not a classifier directory"):
        HarmfulFilter(classifier=str(tmp_path / "nowhere"))
    # A classifier without a safe class cannot be read as a harm score.
    labels = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    labels["id2label"] = {"0": "spam", "1": "violence"}
    (tmp_path / "run" / "model" / "config.json").write_text(json.dumps(labels))
    with pytest.raises(UserError, match="exactly one must name the safe class"):
        HarmfulFilter(classifier=str(tmp_path / "run" / "model")).filter(doc("hello"))


# ------------------------------------------------------------------- whole pipeline


def read_jsonl_dir(d: Path) -> list[dict]:
    rows = []
    for f in sorted(d.glob("*.jsonl*")):
        opener = gzip.open if f.suffix == ".gz" else open
        with opener(f, "rt", encoding="utf-8") as fh:
            rows += [json.loads(x) for x in fh if x.strip()]
    return rows


def test_every_step_inside_a_datatrove_executor(tmp_path):
    html_page = PAGE.replace("<p>價格也很實惠", "<p>" + ZH_HANT_GOOD.replace("\n", "</p><p>") + "</p><p>價格也很實惠")
    docs = [
        Document(text=html_page, id="html", metadata={"format": "html"}),
        Document(text=ZH_HANS_GOOD + "\n聯絡我們：service@example.com 或 0912-345-678。", id="hans"),
        Document(text=EN_GOOD + "\nWrite to amy@example.org for the map.", id="en"),
        Document(text="今日はいい天気ですね。散歩に行きましょう。", id="ja"),
        Document(text="Hello there.", id="short"),
        Document(text=ZH_HANT_GOOD + "\n" + "\n".join([AD_HANT] * 12), id="ad"),
        Document(text=EN_GOOD + "\n" + HARMFUL["en_sexual"][0] + " " + HARMFUL["en_violence"][0], id="harm"),
    ]
    removed = tmp_path / "removed"
    pipeline = [
        docs,
        HtmlExtract(),
        Normalize(),
        LanguageScript(convert="s2t", keep=["zh", "en"], exclusion_writer=JsonlWriter(
            str(removed / "lang"), compression=None)),
        QualityFilter(exclusion_writer=JsonlWriter(str(removed / "quality"), compression=None)),
        RepetitionFilter(exclusion_writer=JsonlWriter(str(removed / "repetition"), compression=None)),
        HarmfulFilter(exclusion_writer=JsonlWriter(str(removed / "harmful"), compression=None)),
        PiiRedact(),
        JsonlWriter(str(tmp_path / "out"), compression=None),
    ]
    LocalPipelineExecutor(pipeline=pipeline, tasks=1, workers=1,
                          logging_dir=str(tmp_path / "logs")).run()
    out = {r["id"]: r for r in read_jsonl_dir(tmp_path / "out")}
    assert sorted(out) == ["en", "hans", "html"]
    assert "😋👍" in out["html"]["text"] and "tracker" not in out["html"]["text"]
    assert out["html"]["metadata"]["script"] == "Hant" and "converted" not in out["html"]["metadata"]
    hans = out["hans"]
    assert hans["metadata"]["converted"] == "s2t" and hans["text"].startswith("上海的秋天來得很晚")
    assert hans["text"].endswith("聯絡我們：<EMAIL> 或 <PHONE>。")
    assert hans["metadata"]["pii"] == {"email": 1, "phone": 1}
    assert out["en"]["text"].endswith("Write to <EMAIL> for the map.")
    why = {name: {r["id"]: r["metadata"]["filter_reason"] for r in read_jsonl_dir(removed / name)}
           for name in ("lang", "quality", "repetition", "harmful")}
    assert why == {"lang": {"ja": "lang_other"}, "quality": {"short": "too_short"},
                   "repetition": {"ad": "dup_lines"}, "harmful": {"harm": "harmful_sexual"}}
    stats = {s["name"]: s["stats"] for s in json.loads((tmp_path / "logs" / "stats.json").read_text())}
    harmful = next(v for k, v in stats.items() if "Harmful" in k)
    assert harmful["dropped_harmful_sexual"] == 1 and harmful["forwarded"] == 3
    pii_stats = next(v for k, v in stats.items() if "PII" in k)
    assert pii_stats["pii_email"] == 2 and pii_stats["pii_phone"] == 1


# ------------------------------------------------------------------------- real text


def _read(path: Path, n: int) -> list[str]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if len(out) >= n:
                break
            out.append(json.loads(line)["text"])
    return out


def test_real_chinese_and_english_text_keep_rates(shared_data):
    tang = [normalize_text(t) for t in _read(shared_data / "tang-poems-zh-hant.jsonl", 200)]
    ci = [normalize_text(t) for t in _read(shared_data / "song-ci-zh-hans.jsonl", 200)]
    classics = [normalize_text(t) for t in _read(shared_data / "classics-zh.jsonl", 80)]
    play = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")
    scenes = [normalize_text(play[i:i + 2000]) for i in range(0, 200_000, 2000)]

    def share(xs, pred):
        return sum(map(pred, xs)) / len(xs)

    # Language and script: the poems are labelled by corpus.
    assert share(tang, lambda t: detect_lang(t) == "zh" and han_script(t)[0] == "Hant") >= 0.98
    assert share(ci, lambda t: detect_lang(t) == "zh" and han_script(t)[0] == "Hans") >= 0.98
    assert share(scenes, lambda t: detect_lang(t) == "en") == 1.0
    # English plays: the quality and repetition rules keep nearly all.
    en_q, en_r = QUALITY_THRESHOLDS["en"], REPETITION_THRESHOLDS["en"]
    assert share(scenes, lambda t: quality_reason(t, "en", en_q) is None
                 and repetition_reason(t, "en", en_r) is None) >= 0.9
    # Chinese, default (web) thresholds: poems are mostly too short for a web page, and
    # classical prose has fewer modern function words and more punctuation per word than
    # FineWeb-2's web Chinese; what drops is dropped for those documented reasons only.
    zh_q, zh_r = QUALITY_THRESHOLDS["zh"], REPETITION_THRESHOLDS["zh"]
    why = {quality_reason(t, "zh", zh_q) for t in tang + ci + classics}
    assert why <= {None, "too_short", "alpha_words", "stop_words", "line_punct", "newline_ratio"}
    # With literary thresholds the long classical texts are kept.
    literary = dataclasses.replace(zh_q, min_words=20, min_alpha_words=0.6)
    prose = [t for t in classics if len(t) > 1000]
    assert len(prose) >= 10
    assert share(prose, lambda t: quality_reason(t, "zh", literary) is None) >= 0.7
    # Repetition: verse repeats by design in the Book of Songs, but Tang and Song poems pass.
    assert share(tang + ci, lambda t: repetition_reason(t, "zh", zh_r) is None) >= 0.95
    # Harmful content and PII: no false alarms on literature.
    harmful = HarmfulFilter()
    assert share(tang + ci + classics + scenes, lambda t: harmful.filter(doc(t)) is not True) <= 0.01
    redactor = PiiRedact()
    out = list(redactor(doc(t, str(i)) for i, t in enumerate(tang + ci + classics + scenes)))
    assert share(out, lambda d: "pii" in d.metadata) <= 0.01
