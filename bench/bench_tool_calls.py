"""Tool-call parsing (jielong.infer.tools) on a planted set of model replies, in the three
formats (Hermes `<tool_call>`, Llama 3.1 JSON, Mistral `[TOOL_CALLS]`): the share of planted
calls read back as well-formed calls, the share equal to the expected function and arguments
(BFCL's AST way: the name, and the arguments parsed as JSON, compared as values, not text), and
for the planted broken calls the share caught (reported in `errors`), left as plain text (a Llama
reply that does not start as `{"name"` is text, not a call) and passed on as calls anyway
(garbage; must be 0) — each read whole and streamed token by token.

Run as:  .venv/bin/python bench/bench_tool_calls.py [--n 120] [--seed 0] [--data ../shared/data]

The replies are written from a seeded generator: five functions, arguments in Traditional and
Simplified Chinese and English (with characters rare enough to be split across byte tokens),
one to three calls per reply (parallel calls), text before the calls in some, in each format's
own layout; about one reply in six is broken on purpose (a dropped closing brace, a call cut
off mid-string, a missing "name", single-quoted JSON, an extra brace, a lost `]`). Streamed
means: the reply encoded with a real byte-level BPE (jielong's own, trained here on the shared
Chinese and English text when present), decoded a token at a time with the engine's hold-back
of incomplete characters (jielong.infer.engine.visible), and fed to the StreamParser piece by
piece; a streamed argument piece that is not whole characters counts as a split.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from jielong.infer.engine import visible
from jielong.infer.tools import STYLES, StreamParser, assemble, parse
from jielong.tokenizer import train_tokenizer

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

CITIES = ["臺北", "高雄", "北京", "广州", "饕餮鎮", "Paris", "São Paulo", "New York"]
NOTES = ["記得買牛奶和雞蛋", "给妈妈打电话", "Submit the report", "繳交「期末報告」",
         "带伞☔", "Meet Ana at 3 p.m.", "他說：\"明天見\"", "line one\nline two"]
QUERIES = ["台灣的夜市有哪些小吃", "上海早餐吃什么", "how do rainbows form", "龍的傳說 🐉"]
TARGETS = ["zh-hant", "zh-hans", "en"]


def random_call(rng: random.Random) -> tuple[str, dict]:
    kind = rng.randrange(5)
    if kind == 0:
        return "get_weather", {"city": rng.choice(CITIES), "unit": rng.choice(["c", "f"])}
    if kind == 1:
        return "add", {"a": rng.randint(-999, 999), "b": round(rng.uniform(-50, 50), 2)}
    if kind == 2:
        return "search", {"query": rng.choice(QUERIES), "k": rng.randint(1, 9)}
    if kind == 3:
        return "translate", {"text": rng.choice(NOTES + QUERIES), "target": rng.choice(TARGETS)}
    return "set_reminder", {"time": f"2026-12-0{rng.randint(1, 9)}T0{rng.randint(0, 9)}:30",
                            "note": rng.choice(NOTES), "tags": rng.sample(["家", "工作", "work", "急"], 2),
                            "repeat": rng.choice([None, True, False])}


def write(style: str, calls: list[tuple[str, dict]], prefix: str, rng: random.Random) -> str:
    """The reply a model of that family writes for `calls`."""
    ascii_ = rng.random() < 0.2  # some models escape non-ASCII (\\u81fa)
    dump = lambda x: json.dumps(x, ensure_ascii=ascii_)  # noqa: E731
    if style == "hermes":
        body = "\n".join(f'<tool_call>\n{{"name": "{n}", "arguments": {dump(a)}}}\n</tool_call>'
                         for n, a in calls)
        return (prefix + "\n" if prefix else "") + body
    if style == "llama3":
        return "; ".join(f'{{"name": "{n}", "parameters": {dump(a)}}}' for n, a in calls)
    return "[TOOL_CALLS] [" + ", ".join(f'{{"name": "{n}", "arguments": {dump(a)}}}'
                                         for n, a in calls) + "]"


BREAKS = ["drop_brace", "cut_mid_string", "no_name", "single_quotes", "extra_brace", "lose_bracket"]


def broken(style: str, text: str, how: str) -> str | None:
    """`text` broken the way `how` says (None where the format has no such break)."""
    if how == "drop_brace":
        i = text.rfind("}}")
        return text[:i] + text[i + 1:] if i >= 0 else None
    if how == "cut_mid_string":
        i = text.rfind('": "')
        return text[:i + 6] if i >= 0 else None
    if how == "no_name":
        return text.replace('"name": ', '"nmae": ')
    if how == "single_quotes":
        return text.replace('"name": "', "'name': '", 1).replace('", "arguments"', "', 'arguments'", 1) \
            .replace('", "parameters"', "', 'parameters'", 1)
    if how == "extra_brace":
        if style == "hermes":
            return text.replace("}\n</tool_call>", "}}\n</tool_call>", 1)
        return None if style == "llama3" else text.replace("}]", "}}]")
    if how == "lose_bracket":
        return text[:-1] if style == "mistral" else None
    return None


def planted(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        style = STYLES[i % 3]
        calls = [random_call(rng) for _ in range(rng.choice([1, 1, 2, 3]))]
        prefix = rng.choice(["", "", "好的，我來查一下。", "Let me check."]) if style == "hermes" else ""
        text, how = write(style, calls, prefix, rng), None
        if rng.random() < 0.18:
            how = rng.choice(BREAKS)
            bad = broken(style, text, how)
            text, how = (bad, how) if bad and bad != text else (text, None)  # not every break fits
        rows.append({"style": style, "text": text, "calls": calls, "broken": how})
    return rows


def tokenizer(data: Path):
    texts = []
    if data.is_dir():
        shakespeare = (data / "tinyshakespeare.txt").read_text(encoding="utf-8")[:300_000]
        texts += shakespeare.split("\n\n")
        for name in ("tang-poems-zh-hant.jsonl", "song-ci-zh-hans.jsonl"):
            with open(data / name, encoding="utf-8") as f:
                texts += [json.loads(line)["text"] for _, line in zip(range(4000), f, strict=False)]
    texts += ['{"name": "get_weather", "arguments": {"city": "臺北"}}'] * 50 + CITIES + NOTES + QUERIES
    return train_tokenizer(texts, vocab_size=4096, show_progress=False)


def streamed(tok, text: str, style: str) -> tuple[object, int]:
    """The reply fed token by token; (parsed, argument pieces that split a character)."""
    ids = tok.encode(text)
    p, deltas, sent, splits = StreamParser(style), [], 0, 0
    for k in range(1, len(ids) + 1):
        shown, end, _ = visible(tok.decode(ids[:k]), sent, [])
        deltas += p.feed(shown[sent:end])
        sent = end
    deltas += p.finish()
    for d in deltas:
        for c in d.get("tool_calls", []):
            piece = c["function"]["arguments"]
            splits += bool("\ufffd" in piece or (piece and 0xDC00 <= ord(piece[0]) <= 0xDFFF))
    return assemble(deltas, p.errors), splits


def score(rows: list[dict], results: list) -> dict:
    """Per planted call: read back well formed, equal to the expected (AST); per broken reply:
    caught (reported) or passed on as a wrong call."""
    s = {"calls": 0, "well_formed": 0, "equal": 0, "broken": 0, "caught": 0, "text": 0, "garbage": 0}
    for row, got in zip(rows, results, strict=True):
        read = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in got.calls]
        if row["broken"]:
            s["broken"] += 1
            s["caught"] += bool(got.errors)
            s["text"] += not got.errors and not read
            s["garbage"] += sum(1 for c in read if c not in row["calls"])
            continue
        s["calls"] += len(row["calls"])
        s["well_formed"] += min(len(read), len(row["calls"])) if not got.errors else 0
        s["equal"] += sum(1 for a, b in zip(read, row["calls"], strict=False) if a == b)
    return s


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=120)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=Path, default=DATA, help="the shared data folder")
    args = ap.parse_args()
    rows = planted(args.n, args.seed)
    t0 = time.perf_counter()
    tok = tokenizer(args.data)
    print(f"tokenizer: {tok.vocab_size} tokens, trained in {time.perf_counter() - t0:.1f} s")
    print("| format | mode | replies | planted calls | well-formed | equal (AST) | broken replies | caught | as text | garbage | split pieces | ms/reply |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for style in (*STYLES, "all"):
        part = [r for r in rows if style in ("all", r["style"])]
        for mode in ("whole", "streamed"):
            t0, splits, results = time.perf_counter(), 0, []
            for r in part:
                if mode == "whole":
                    results.append(parse(r["text"], r["style"]))
                else:
                    got, k = streamed(tok, r["text"], r["style"])
                    results.append(got)
                    splits += k
            ms = (time.perf_counter() - t0) * 1000 / len(part)
            s = score(part, results)
            print(f"| {style} | {mode} | {len(part)} | {s['calls']} | {s['well_formed'] / s['calls']:.1%} "
                  f"| {s['equal'] / s['calls']:.1%} | {s['broken']} | {s['caught']}/{s['broken']} "
                  f"| {s['text']} | {s['garbage']} | {splits} | {ms:.2f} |")
    kinds = {}
    for r in rows:
        if r["broken"]:
            kinds[r["broken"]] = kinds.get(r["broken"], 0) + 1
    print("broken on purpose:", ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))


if __name__ == "__main__":
    main()
