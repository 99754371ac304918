"""No file that `jielong data clean` writes — kept shards, dropped/<reason>.jsonl, stats,
report, logs — holds a secret or personal data in the raw: a token, an e-mail address, a
phone number and a national ID are planted in a document dropped by each drop reason of
each step (and in the metadata of JSONL records), then every file under OUT is searched for
them. The secrets are synthetic and built from pieces, so the source holds none whole."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_data_clean import BAD_EN, BAD_ZH, EN_GOOD, HARMFUL, ZH_HANS_GOOD, ZH_HANT_GOOD

from jielong import cli
from jielong.prep import html_extract
from jielong.prep.quality_model import train_quality

pytest.importorskip("datatrove")

HF = "hf" + "_" + "Qz7" * 12
EMAIL = "amy.lee" + "@" + "example.com"
PHONE = "0912" + "-345-678"
TW_ID = "A12345" + "6789"
RAW = [HF, EMAIL, PHONE, TW_ID, PHONE.replace("-", "")]
PLANT = f"{EMAIL} {PHONE} {TW_ID} {HF}"
EN_PLANT = f"Write to {EMAIL} or call {PHONE}; my ID is {TW_ID} and my token is {HF}."
ZH_PLANT = f"寫信到{EMAIL}，或打{PHONE}；身分證{TW_ID}，權杖{HF}。"


def _made_up(n: int, start: int = 0) -> list[str]:
    """n distinct seven-letter made-up words: text whose n-grams are all unique."""
    return ["v" + "aeiou"[i % 5] + chr(97 + i % 26) + chr(97 + i // 26 % 26) + "o" + chr(97 + i // 676 % 26) + "s"
            for i in range(start, start + n)]


def _sentences(words: list[str]) -> str:
    return " ".join("The " + " ".join(words[i:i + 4]) + " and " + " ".join(words[i + 4:i + 8]) + "."
                    for i in range(0, len(words), 8))


def _repeated_span(filler: int) -> str:
    """A 12-word span said twice in English of `filler` × 2 unique words: its share of the
    text picks which of the 5- to 10-gram limits it crosses first."""
    span = " ".join(_made_up(12, 5000))
    return f"{EN_PLANT} {_sentences(_made_up(filler))} {span}. {_sentences(_made_up(filler, 9000))} {span}."


def _repeated_phrase(n: int, times: int, filler: int) -> str:
    """An n-word phrase said `times` times, each followed by a new word."""
    phrase, new = _made_up(n, 7000), _made_up(times, 20000)
    body = " ".join(" ".join(phrase + [w]) for w in new)
    return f"{EN_PLANT} {_sentences(_made_up(filler))} {body}."


# reason -> a document that the pipeline drops for it, each with the planted strings
DROPPED = {
    "lang_other": "Привет, как дела? Это обычный русский текст о погоде и о городе. " * 5 + PLANT,
    "empty": f"Privacy policy: write to {EMAIL} or {PHONE}, {TW_ID} {HF}\nTerms of use",
    "too_long": "The cat sat on the mat. " * 17_000 + EN_PLANT,
    "avg_word_length": "I do it. " * 40 + EN_PLANT,
    "dup_lines": "\n".join([ZH_PLANT] * 8 + ZH_HANT_GOOD.split("\n")),
    "dup_line_chars": "\n".join(ZH_HANT_GOOD.split("\n") + [ZH_PLANT + "我們明天再來這裡看看有什麼新東西。"] * 2),
    "dup_paras": "\n\n".join([ZH_HANS_GOOD, "歡迎訂閱！", ZH_HANT_GOOD, "歡迎訂閱！", "歡迎訂閱！", ZH_PLANT]),
    "top_2gram": _repeated_phrase(3, 6, 10),
    "top_3gram": _repeated_phrase(3, 3, 20),
    "top_4gram": _repeated_phrase(4, 3, 20),
    "dup_5gram": _repeated_phrase(5, 6, 90),
    **{f"dup_{n}gram": _repeated_span(filler) for n, filler in ((6, 20), (7, 22), (8, 26), (9, 30), (10, 32))},
    **{k: BAD_EN[k] + "\n" + EN_PLANT for k in ("too_short", "bullet_lines", "ellipsis_lines", "symbol_ratio",
                                                "lorem_ipsum", "alpha_words", "line_punct")},
    **{k: BAD_ZH[k] + "\n" + ZH_PLANT for k in ("stop_words", "newline_ratio")},
    **{v[1]: (ZH_HANT_GOOD if "han" in k else EN_GOOD) + "\n" + v[0] + "\n" + (ZH_PLANT if "han" in k else EN_PLANT)
       for k, v in HARMFUL.items() if k in ("en_sexual", "en_violence", "hant_self_harm", "hans_hate")},
}
# Not reachable with `jielong data clean`'s defaults: curly_bracket (off), dup_para_chars (a
# repeated paragraph's lines repeat too, and the line limits are as strict), harmful_classifier
# (needs --harmful_classifier).


def _assert_no_raw(out: Path) -> int:
    """Every file under `out` is free of the planted strings; returns how many were read."""
    files = [p for p in out.rglob("*") if p.is_file()]
    for p in files:
        data = p.read_bytes()
        for raw in RAW:
            assert raw.encode() not in data, f"{p.relative_to(out)} holds {raw[:6]}…"
            escaped = json.dumps(raw, ensure_ascii=True)[1:-1].encode()
            assert escaped not in data, f"{p.relative_to(out)} holds {raw[:6]}… (escaped)"
    return len(files)


def test_no_planted_secret_or_pii_in_any_file_clean_writes(tmp_path: Path, monkeypatch):
    src = tmp_path / "in"
    src.mkdir()
    rows = [{"text": t, "id": f"doc-{k}", "author": EMAIL, "notes": [PHONE, {"key": HF}]}
            for k, t in DROPPED.items()]
    rows += [{"text": EN_GOOD + "\n" + EN_PLANT, "id": "kept", "contact": EMAIL},
             {"text": EN_GOOD + "\n" + EN_PLANT, "id": "exact-copy"},
             {"text": EN_GOOD.replace("baker", "cook") + "\n" + EN_PLANT, "id": "near-copy"},
             {"text": "", "id": "empty-text", "author": EMAIL},
             {"body": PLANT, "id": f"no-text-field-{EMAIL}"}]
    lines = [json.dumps(r, ensure_ascii=False) for r in rows] + ['{"text": "' + PLANT + ' broken']
    (src / "docs.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (src / "bad.txt").write_bytes(PLANT.encode() + b"\n\xff\xfe not UTF-8\n")
    (src / "script-only.html").write_text(f"<html><body><script>var t = '{PLANT}';</script></body></html>",
                                          encoding="utf-8")
    (src / "unparsable.html").write_text(f"<html><body><p>PARSER-FAILS {PLANT}</p></body></html>",
                                         encoding="utf-8")
    real = html_extract.extract_html

    def extract(html, *a, **kw):
        if "PARSER-FAILS" in html:
            raise ValueError(f"cannot parse {html}")
        return real(html, *a, **kw)

    monkeypatch.setattr(html_extract, "extract_html", extract)  # one worker: the steps run in this process
    out = tmp_path / "out"
    stats = cli.run(["data", "clean", str(src), "--out", str(out), "--workers", "1", "--languages", "zh", "en"])
    dropped = {reason for row in stats["steps"] for reason in row["dropped"]}
    expected = set(DROPPED) | {"unreadable", "no_text", "extract_error", "exact_duplicate", "near_duplicate"}
    assert expected <= dropped, sorted(expected - dropped)
    by = {r["step"]: r["dropped"] for r in stats["steps"]}
    assert by["html"] == {"no_text": 1, "extract_error": 1} and by["readable"] == {"unreadable": 3, "no_text": 1}
    assert _assert_no_raw(out) > 10
    # what was planted is in the files, redacted: a placeholder where each one was
    written = "".join(p.read_text(encoding="utf-8") for p in (out / "dropped").glob("*.jsonl"))
    for placeholder in ("<HF_TOKEN>", "<EMAIL>", "<PHONE>", "<TW_ID>"):
        assert written.count(placeholder) >= len(DROPPED), placeholder
    kept = [json.loads(x) for p in (out / "data").glob("*.jsonl") for x in p.read_text().splitlines()]
    assert [r["id"] for r in kept] == ["kept"]
    assert kept[0]["metadata"]["contact"] == "<EMAIL>" and kept[0]["metadata"]["pii_metadata"] == {"email": 1}


def test_documents_dropped_by_the_quality_model_are_redacted_too(tmp_path: Path):

    model = tmp_path / "q.json"
    train_quality([EN_GOOD, ZH_HANT_GOOD] * 4, ["buy now cheap"] * 8, steps=20).save(model)
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"text": EN_GOOD + "\n" + EN_PLANT, "from": EMAIL}) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    stats = cli.run(["data", "clean", str(src), "--out", str(out), "--workers", "1",
                     "--quality_model", str(model), "--min_quality", "1"])
    assert stats["steps"][-3]["dropped"] == {"low_quality": 1}
    _assert_no_raw(out)
    assert "<HF_TOKEN>" in (out / "dropped" / "low_quality.jsonl").read_text()


def test_with_pii_skipped_nothing_is_redacted(tmp_path: Path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"text": "Buy now. " + EN_PLANT}) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    cli.run(["data", "clean", str(src), "--out", str(out), "--workers", "1", "--skip", "pii"])
    assert HF in (out / "dropped" / "too_short.jsonl").read_text()  # as the user asked
