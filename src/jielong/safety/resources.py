"""Crisis resources for the self-harm reply, chosen by the user's script and `--locale`.

    from jielong.safety.resources import crisis_reply, resources_card
    crisis_reply("我不想活了")                   # 繁體 -> Taiwan's 1925 / 1995 / 1980, in 繁體
    crisis_reply("我不想活了", locale="zh-HK")   # Hong Kong's 18111 / Samaritans
    resources_card("I want to end it", "en-US")  # {"title", "lines", "emergency"} for the chat card

The lines live in crisis_resources.yaml (TW, CN, HK and an international fallback); every
entry names the public page it was checked against and the date, and `load_resources` refuses
an entry without them. The reply does what the course notes ask ("輸入自殺訊息，應該要輸出
專線、心理醫師資訊，不是鼓勵"): it acknowledges the person without judging, says they are not
alone, encourages reaching out now, gives the region's lines and the local emergency number
for immediate danger, and invites them to keep talking. It never discusses means.

Language and script are told by prep's `detect_lang` and `han_script` (OpenCC's tables: a
character that t2s changes is Traditional-only), the same as the data pipeline uses.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from jielong.errors import UserError
from jielong.files import read_yaml
from jielong.prep.language import detect_lang, han_script
from jielong.safety.moderate import cached_policy

RESOURCES = Path(__file__).parent / "crisis_resources.yaml"
REGIONS = ("TW", "CN", "HK", "INTL")
ENTRY_KEYS = ("name", "name_en", "number", "url", "hours", "languages", "source", "checked", "note")
LOCALE_SCRIPTS = {"hant": "TW", "hans": "CN"}
HOURS = {"24/7": {"zh-hant": "24 小時", "zh-hans": "24 小时", "en": "24/7"},
         "18h+ daily": {"zh-hant": "每日至少 18 小時", "zh-hans": "每日不少于 18 小时",
                        "en": "at least 18 hours a day"}}

TEXT = {
    "zh-hant": {
        "title": "你不是一個人",
        "danger": "如果你現在有立即的危險，請撥打 {numbers}，或請身邊的人陪你。",
        "close": "你願意的話，也可以繼續跟我說說發生了什麼事。",
        "or": " 或 ",
    },
    "zh-hans": {
        "title": "你不是一个人",
        "danger": "如果你现在有立即的危险，请拨打 {numbers}，或请身边的人陪着你。",
        "close": "你愿意的话，也可以继续跟我说说发生了什么事。",
        "or": " 或 ",
    },
    "en": {
        "title": "You are not alone",
        "danger": "If you are in immediate danger, call {numbers} now, or ask someone near you "
                  "to stay with you.",
        "close": "If you'd like, you can also keep talking to me about what's going on.",
        "or": " or ",
    },
}


def load_resources(path: str | Path = RESOURCES) -> dict[str, dict[str, list[dict]]]:
    """{region: {"lines": [entry, ...], "emergency": [entry, ...]}} from the YAML file, every
    entry checked; a mistake raises a one-line UserError naming the file and key."""
    path = Path(path)
    data = read_yaml(path, "crisis resources not found; see jielong/safety/crisis_resources.yaml")
    if not isinstance(data, dict) or not isinstance(data.get("regions"), dict):
        raise UserError(f"{path}: expected a mapping with a 'regions' mapping (TW, CN, HK, INTL)")
    regions = data["regions"]
    for r in REGIONS:
        if r not in regions:
            raise UserError(f"{path}: regions.{r}: missing; every region {', '.join(REGIONS)} needs lines")
    out = {}
    for r, body in regions.items():
        if r not in REGIONS:
            raise UserError(f"{path}: regions.{r}: unknown region; the regions are {', '.join(REGIONS)}")
        if not isinstance(body, dict) or not body.get("lines"):
            raise UserError(f"{path}: regions.{r}.lines: missing; list at least one line")
        out[r] = {kind: [check_entry(e, f"{path}: regions.{r}.{kind}[{i}]")
                         for i, e in enumerate(body.get(kind) or [])]
                  for kind in ("lines", "emergency")}
    return out


def check_entry(entry: object, where: str) -> dict:
    """The entry with `checked` as an ISO date string, or a UserError naming the key."""
    if not isinstance(entry, dict):
        raise UserError(f"{where}: expected a mapping with {', '.join(ENTRY_KEYS)}")
    extra = [k for k in entry if k not in ENTRY_KEYS]
    if extra:
        raise UserError(f"{where}.{extra[0]}: unknown key; the keys are {', '.join(ENTRY_KEYS)}")
    for key in ("name", "name_en", "source", "checked"):
        if not entry.get(key):
            raise UserError(f"{where}.{key}: missing; every entry needs the page it was checked "
                            "against (source) and the date (checked)")
    if not (entry.get("number") or entry.get("url")):
        raise UserError(f"{where}.number: missing; give a number or a url")
    if not str(entry["source"]).startswith(("http://", "https://")):
        raise UserError(f"{where}.source: {entry['source']!r} is not a URL")
    checked = entry["checked"]
    if not isinstance(checked, datetime.date):
        try:
            checked = datetime.date.fromisoformat(str(checked))
        except ValueError:
            raise UserError(f"{where}.checked: {checked!r} is not a date (YYYY-MM-DD)") from None
    return {**entry, "checked": checked.isoformat(), "number": str(entry.get("number") or ""),
            "url": entry.get("url") or "", "hours": entry.get("hours") or ""}


def region_for(text: str, locale: str | None = None) -> str:
    """"TW", "CN", "HK" or "INTL" for a message `text` and an optional `locale` (BCP 47).

    The locale wins when given: its region subtag if we have that region (zh-TW, en-HK),
    any other region subtag the international fallback (zh-SG, en-US: a named place we hold
    no lines for), else its script (zh-Hant -> TW, zh-Hans -> CN); a bare zh falls to the text.
    Without a locale the text's script decides: Traditional -> TW, since most people typing
    Traditional into a CLI tool are in Taiwan (Hong Kong and Macau users write it too; give
    --locale zh-HK there); Simplified -> CN; English and anything else -> INTL. Chinese whose
    script cannot be told (every character shared by both, e.g. 我不想活了) goes to TW too.
    """
    if locale:
        parts = [p.lower() for p in locale.replace("_", "-").split("-")]
        for p in parts[1:]:
            if p.upper() in REGIONS and p.upper() != "INTL":
                return p.upper()
            if len(p) == 2 or p.isdigit():
                return "INTL"
        for p in parts[1:]:
            if p in LOCALE_SCRIPTS:
                return LOCALE_SCRIPTS[p]
        if parts[0] != "zh":
            return "INTL"
    kind = script_of(text)
    if kind == "zh-hans":
        return "CN"
    if kind in ("zh-hant", "zh"):
        return "TW"
    return "INTL"


def script_of(text: str) -> str:
    """"zh-hant", "zh-hans", "zh" (script not telling), "en" or "other"."""
    lang = detect_lang(text or "")
    if lang != "zh":
        return lang
    return {"Hant": "zh-hant", "Hans": "zh-hans"}.get(han_script(text)[0], "zh")


def language_for(text: str, region: str) -> str:
    """The reply's language: the text's own (en, zh-hant, zh-hans), else the region's."""
    kind = script_of(text)
    if kind in ("en", "zh-hant", "zh-hans"):
        return kind
    if kind == "zh" or region != "INTL":
        return {"CN": "zh-hans"}.get(region, "zh-hant")
    return "en"


def hours_in(hours: str, lang: str) -> str:
    """An entry's hours ("24/7", "18h+ daily", or free text) in the reply's language."""
    return HOURS.get(hours, {}).get(lang, hours)


def resources_card(text: str, locale: str | None = None, resources: dict | None = None) -> dict:
    """What the web chat renders as a card: {"region", "language", "title", "lines":
    [{name, number, hours, url}], "emergency": [{name, number}]}."""
    data = resources or load_resources()
    region = region_for(text, locale)
    lang = language_for(text, region)
    key = "name_en" if lang == "en" else "name"

    def line(e: dict) -> dict:
        return {"name": e[key], "number": e["number"], "hours": hours_in(e["hours"], lang),
                "url": e["url"]}

    return {"region": region, "language": lang, "title": TEXT[lang]["title"],
            "lines": [line(e) for e in data[region]["lines"]],
            "emergency": [{"name": e[key], "number": e["number"]} for e in data[region]["emergency"]]}


def crisis_reply(text: str, locale: str | None = None, resources: dict | None = None,
                 opening: str | None = None) -> str:
    """A caring reply in the user's script with the region's lines and emergency numbers,
    opened by `opening` (default: the default policy's self_harm message in that language,
    default_policy.yaml, so a team changes the words in one place)."""
    card = resources_card(text, locale, resources)
    words = TEXT[card["language"]]
    if opening is None:
        opening = cached_policy("default").message("self_harm", card["language"])
    rows = []
    for ln in card["lines"]:
        reach = ln["number"] or ln["url"]
        hours = f" ({ln['hours']})" if ln["hours"] else ""
        rows.append(f"- {ln['name']}: {reach}{hours}")
    after = []
    if card["emergency"]:
        numbers = words["or"].join(e["number"] for e in card["emergency"])
        after.append(words["danger"].format(numbers=numbers))
    after.append(words["close"])
    # a blank line after the list, so Markdown does not read what follows as its last item
    return "\n".join([opening, *rows]) + "\n\n" + "\n".join(after)
