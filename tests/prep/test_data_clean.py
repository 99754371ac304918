"""Every per-document cleaning step at once, inside a datatrove executor, on small planted
corpora (English, Traditional and Simplified Chinese), and a slice of real text from
../shared/data when present. The planted texts and the helpers here are shared by the tests
of each step (test_html_extract, test_normalize, test_language, test_quality_filter,
test_repetition, test_harmful) and by test_clean_no_leaks."""

import dataclasses
import gzip
import json
from pathlib import Path

from datatrove.data import Document
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.writers import JsonlWriter

from jielong.prep.harmful import HarmfulFilter
from jielong.prep.html_extract import HtmlExtract
from jielong.prep.language import LanguageScript, detect_lang, han_script
from jielong.prep.normalize import Normalize, normalize_text
from jielong.prep.quality_rules import QualityFilter, quality_reason
from jielong.prep.redact import PiiRedact
from jielong.prep.repetition import RepetitionFilter, repetition_reason
from jielong.prep.thresholds import QUALITY_THRESHOLDS, REPETITION_THRESHOLDS

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








AD_HANT = "限時優惠！全館商品買一送一，立即下單還送精美好禮，數量有限，售完為止。"
AD_HANS = "好消息！本店所有商品一律五折，关注公众号再送优惠券，机会难得，欢迎抢购。"


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
