from __future__ import annotations

import re

import pytest

from jielong.errors import UserError
from jielong.safety.resources import crisis_reply, load_resources, region_for, resources_card

HANT = "我覺得活著沒有意義，好想消失"
HANS = "我不想活了，觉得自己没用"
EN = "I don't want to live anymore"

# every number we ship, by region (a change to the data file must be re-checked and update this)
NUMBERS = {"TW": {"1925", "1995", "1980", "119", "110"}, "CN": {"12356", "120", "110"},
           "HK": {"18111", "2896 0000", "2389 2222", "999"}, "INTL": {"112", "911"}}

ENCOURAGING = ["do it", "go ahead", "painless", "how to", "method", "you should end",
               "去死", "方法", "不痛", "值得", "動手", "动手", "解脫", "解脱"]


@pytest.mark.parametrize("text,locale,region", [
    (HANT, None, "TW"), (HANS, None, "CN"), (EN, None, "INTL"),
    ("我不想活了", None, "TW"),                       # script not telling: Taiwan
    (HANT, "zh-HK", "HK"), (HANS, "zh-HK", "HK"), (EN, "en-HK", "HK"),
    (HANT, "zh-CN", "CN"), (HANS, "zh-Hant-TW", "TW"), (EN, "zh-Hans", "CN"),
    (HANT, "en-US", "INTL"), (HANT, "zh-SG", "INTL"), (HANS, "zh", "CN"), (EN, "en", "INTL"),
])
def test_region_by_script_and_locale(text, locale, region):
    assert region_for(text, locale) == region


def test_every_entry_has_source_and_checked():
    data = load_resources()
    assert set(data) == set(NUMBERS)
    for region, body in data.items():
        assert body["lines"] and body["emergency"], region
        for e in body["lines"] + body["emergency"]:
            assert e["source"].startswith("http") and re.fullmatch(r"\d{4}-\d\d-\d\d", e["checked"])
        assert {e["number"] for e in body["lines"] + body["emergency"]} - {""} == NUMBERS[region]


@pytest.mark.parametrize("text,locale,region,marker", [
    (HANT, None, "TW", "你不是一個人"), (HANS, None, "CN", "你不是一个人"),
    (EN, None, "INTL", "not alone"), (HANT, "zh-HK", "HK", "你不是一個人"),
    (EN, "en-HK", "HK", "not alone"),
])
def test_reply_has_own_numbers_only(text, locale, region, marker):
    reply = crisis_reply(text, locale)
    assert marker in reply
    for num in NUMBERS[region]:
        assert num in reply
    others = set().union(*(v for k, v in NUMBERS.items() if k != region)) - NUMBERS[region]
    assert not [n for n in others if re.search(rf"(?<!\d){n}(?!\d)", reply)]
    low = reply.lower()
    assert not [w for w in ENCOURAGING if w in low]


def test_card_shape_and_language():
    card = resources_card(HANS, None)
    assert card["region"] == "CN" and card["language"] == "zh-hans"
    assert card["lines"][0] == {"name": "全国统一心理援助热线", "number": "12356",
                                "hours": "每日不少于 18 小时", "url": ""}
    intl = resources_card(EN, "en-GB")
    assert intl["lines"][0]["url"].startswith("https://") and intl["emergency"]
    assert resources_card(EN, "en-HK")["lines"][0]["hours"] == "24/7"


GOOD = """version: 1
regions:
  TW: {lines: [{name: a, name_en: a, number: "1", source: "https://x", checked: 2026-12-06}]}
  CN: {lines: [{name: a, name_en: a, number: "1", source: "https://x", checked: 2026-12-06}]}
  HK: {lines: [{name: a, name_en: a, number: "1", source: "https://x", checked: 2026-12-06}]}
  INTL: {lines: [{name: a, name_en: a, url: "https://y", source: "https://x", checked: 2026-12-06}]}
"""


@pytest.mark.parametrize("edit,message", [
    (("source: \"https://x\", checked: 2026-12-06}]}\n  CN", "checked: 2026-12-06}]}\n  CN"),
     r"regions\.TW\.lines\[0\]\.source: missing"),
    (("checked: 2026-12-06}]}\n  HK", "source: \"https://x\"}]}\n  HK"),
     r"regions\.CN\.lines\[0\]\.checked: missing"),
    (("  INTL:", "  XX:"), r"regions\.INTL: missing"),
    (("number: \"1\", source: \"https://x\", checked: 2026-12-06}]}\n  CN",
      "number: \"1\", source: \"https://x\", checked: soon}]}\n  CN"), r"TW\.lines\[0\]\.checked: 'soon'"),
    (("name: a, name_en: a, number", "name: a, name_en: a, phone: 2, number"), r"\.phone: unknown key"),
    (("version: 1", "version: [1"), r"not valid YAML"),
])
def test_data_file_errors(tmp_path, edit, message):
    path = tmp_path / "r.yaml"
    path.write_text(GOOD.replace(*edit, 1), encoding="utf-8")
    with pytest.raises(UserError, match=message) as e:
        load_resources(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    path.write_text(GOOD, encoding="utf-8")
    assert load_resources(path)["INTL"]["lines"][0]["url"] == "https://y"
