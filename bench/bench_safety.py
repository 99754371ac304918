"""The safety rails (issue 17) measured: per-category precision, recall, F1 and false-positive
rate on a held-out 繁/简/en set with hard negatives, the offensive-language detector on COLD,
the crisis lines' region for self-harm messages, and the time the rails add.

Run as:
    .venv/bin/python bench/bench_safety.py
    .venv/bin/python bench/bench_safety.py --guard runs/guard/model --cold ../shared/data/cold \
        --cold_test COLDataset/test.csv --model runs/demo/model

1. safety_texts/heldout.tsv (written for this bench, see its header: 8 categories × 18-26
   positives over 繁/简/en, 120 negatives, 114 of them hard negatives written to look like a
   category). Per category, as Llama Guard's model cards report a classifier (precision,
   recall, F1, false-positive rate; Llama Guard 3 8B MODEL_CARD.md, PurpleLlama): a text is
   positive for a category when its label names it, predicted positive when `moderate` flags
   the category under the default policy; FPR is over every text not of the category, and
   "FPR hard" over the safe texts alone; "stopped": the category's texts that some blocking
   category (refuse, resources) stops, whichever it is (a minors text refused as sexual).
   Detectors: the defaults (lexicon + injection rules); with `--guard DIR` also a `jielong
   train guard` classifier alone and both combined (max per category, as `moderate` does).
2. COLD (Deng et al. 2022, thu-coai/COLDataset): the lexicon's hate category as the offensive
   detector, on dev (and `--cold_test`, the split the paper reports), offensive = label 1.
3. Self-harm rows: does `Rails(locale=...).check(text).blocked.card["region"]` name the region
   expected from the row's locale, else its script (hant TW, hans CN, en INTL); and the
   self-harm look-alikes (累死了, "killing me", a friend at risk): how many pass unblocked.
4. Time: `Rails.check` per held-out message (p50/p95, ms) and `rails.stream(about).feed(delta)`
   over a ~1000-delta reply of 1-3 characters each, mixed Chinese and English; with `--model`
   the per-token cost of greedy decoding with that model, for scale.
"""

from __future__ import annotations

import argparse
import math
import random
import time
from pathlib import Path

import torch
from common import machine, median

from jielong.checkpoint import load_model
from jielong.classifier import predict
from jielong.infer.generate import generate_ids
from jielong.infer.sampling import SamplingParams
from jielong.safety.guard_classifier import ClassifierDetector
from jielong.safety.guard_data import binary_f1, read_cold
from jielong.safety.lexicon import LexiconDetector
from jielong.safety.moderate import default_detectors, moderate
from jielong.safety.policy import CATEGORIES, load_policy
from jielong.safety.rails import BLOCKING, Rails
from jielong.safety.resources import resources_card

HELDOUT = Path(__file__).parent / "safety_texts" / "heldout.tsv"
SCRIPTS = {"hant": "繁", "hans": "简", "en": "en"}
REGION_OF_SCRIPT = {"hant": "TW", "hans": "CN", "en": "INTL"}
# A reply as a chat model streams it: mixed Chinese and English, code names, numbers.
REPLY = ("好的，我來說明一下。Python 的 list 和 tuple 都可以存放多個元素，但 list 是 mutable，"
         "tuple 是 immutable。如果你需要在迴圈裡 append 新的資料，用 list 比較方便；"
         "如果是當作 dict 的 key，就要用 tuple。舉例來說，coordinates = (25.03, 121.56) "
         "代表台北的經緯度。另外，排序可以用 sorted()，它會回傳一個新的 list，"
         "而 list.sort() 則是 in-place 排序。效能上兩者差不多，都是 O(n log n)。"
         "接下来我们看看 pandas：读取 CSV 用 pd.read_csv('data.csv')，然后用 df.head() 看前五行。"
         "如果数据很大，可以设定 chunksize=10000 分批处理，这样内存不会爆掉。"
         "Finally, remember to write tests: pytest makes it easy, and a small test that can fail "
         "is worth more than a large one that cannot. 希望這些說明對你有幫助！")


def read_heldout(path: Path = HELDOUT) -> list[dict]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        label, script, locale, text = line.split("\t")
        kind, _, near = label.partition(":")
        labels = set() if kind == "safe" else set(kind.split("+"))
        assert labels <= set(CATEGORIES) and script in SCRIPTS, f"{path}:{n}"
        rows.append({"labels": labels, "near": near or None, "script": script,
                     "locale": None if locale == "-" else locale, "text": text})
    return rows


def category_table(rows: list[dict], flags: list[set]) -> dict:
    """Per category: n, precision, recall, F1, FPR (over every text not of it), FPR on safe texts."""
    out = {}
    for c in CATEGORIES:
        truth = [c in r["labels"] for r in rows]
        pred = [c in f for f in flags]
        tp = sum(t and p for t, p in zip(truth, pred, strict=True))
        fp = sum(p and not t for t, p in zip(truth, pred, strict=True))
        pos, neg = sum(truth), len(rows) - sum(truth)
        safe = [c in f for r, f in zip(rows, flags, strict=True) if not r["labels"]]
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / pos if pos else 0.0
        out[c] = {"n": pos, "precision": prec, "recall": rec,
                  "f1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0,
                  "fpr": fp / neg if neg else 0.0, "fpr_hard": sum(safe) / max(1, len(safe))}
    return out


def flagged(rows: list[dict], policy, dets) -> list[set]:
    return [{c for c, hit in moderate(r["text"], policy, dets)["categories"].items() if hit}
            for r in rows]


def pct(xs: list[float], q: float) -> float:
    """The nearest-rank percentile."""
    s = sorted(xs)
    return s[max(0, math.ceil(q * len(s)) - 1)]


def print_categories(name: str, rows: list[dict], flags: list[set], policy) -> None:
    table = category_table(rows, flags)
    stops = [any(policy.rules[c].action in BLOCKING for c in f) for f in flags]
    print(f"\n{name}: per category ({len(rows)} texts, {sum(not r['labels'] for r in rows)} safe)\n")
    print("| category | n | precision | recall | F1 | FPR | FPR hard | stopped |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for c, m in table.items():
        stopped = [x for r, x in zip(rows, stops, strict=True) if c in r["labels"]]
        shown = f"{sum(stopped) / len(stopped):.2f}" if policy.rules[c].action in BLOCKING else "-"
        print(f"| {c} | {m['n']} | {m['precision']:.2f} | {m['recall']:.2f} | {m['f1']:.2f} | "
              f"{m['fpr']:.3f} | {m['fpr_hard']:.3f} | {shown} |")
    print("\n| script | unsafe texts | any category flagged (recall) | safe texts | flagged (FPR) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for s in (*SCRIPTS, "all"):
        pick = [(r, f) for r, f in zip(rows, flags, strict=True) if s in ("all", r["script"])]
        pos = [bool(f) for r, f in pick if r["labels"]]
        neg = [bool(f) for r, f in pick if not r["labels"]]
        print(f"| {SCRIPTS.get(s, s)} | {len(pos)} | {sum(pos) / len(pos):.2f} | {len(neg)} | "
              f"{sum(neg) / len(neg):.2f} |")
    print("\nmissed (label: text -> flagged):")
    for r, f in zip(rows, flags, strict=True):
        if r["labels"] and not r["labels"] & f:
            print(f"  {'+'.join(sorted(r['labels']))} [{r['script']}]: {r['text']} -> {sorted(f) or '-'}")
    print("false positives (category not in the label):")
    for r, f in zip(rows, flags, strict=True):
        if f - r["labels"]:
            print(f"  {'+'.join(sorted(r['labels'])) or 'safe:' + str(r['near'])} [{r['script']}]: "
                  f"{r['text']} -> {sorted(f - r['labels'])}")


def binary_rates(truth: list[bool], pred: list[bool]) -> dict:
    """Offensive-class precision, recall and F1, accuracy and macro F1 (both classes)."""
    tp = sum(t and p for t, p in zip(truth, pred, strict=True))
    f1_off = binary_f1(truth, pred)
    f1_not = binary_f1([not t for t in truth], [not p for p in pred])
    return {"precision": tp / max(1, sum(pred)), "recall": tp / max(1, sum(truth)), "f1": f1_off,
            "accuracy": sum(t == p for t, p in zip(truth, pred, strict=True)) / len(truth),
            "macro_f1": (f1_off + f1_not) / 2}


def cold_rates(path: Path, policy, clf=None) -> dict:
    """COLD offensive vs not on one split: the lexicon's hate category, any lexicon category,
    and with `clf` (a ClassifierDetector) its "hate" verdict and either of the two."""
    rows = read_cold(path)
    lex = (LexiconDetector(),)
    truth = [r["label"] == "hate" for r in rows]
    hits = [moderate(r["text"], policy, lex)["categories"] for r in rows]
    out = {"n": len(rows), "offensive": sum(truth),
           "lexicon hate": binary_rates(truth, [h["hate"] for h in hits]),
           "lexicon, any category": binary_rates(truth, [any(h.values()) for h in hits]),
           "always non-offensive": binary_rates(truth, [False] * len(rows))}
    if clf is not None:
        got = [label == "hate" for label, _ in predict(clf.clf, clf.tok, [r["text"] for r in rows], clf.max_len)]
        out["classifier hate"] = binary_rates(truth, got)
        out["lexicon or classifier"] = binary_rates(truth, [g or h["hate"] for g, h in zip(got, hits, strict=True)])
    return out


def locale_check(rows: list[dict], policy, model_dets=()) -> None:
    harm = [r for r in rows if "self_harm" in r["labels"]]
    given = right = 0
    print("\nself-harm rows: region of the crisis lines (expected: locale, else script)")
    for r in harm:
        want = region_expected(r)
        v = Rails(policy, model_detectors=model_dets, locale=r["locale"]).check(r["text"])
        got = v.blocked.card["region"] if v.blocked and v.blocked.card else None
        given += got is not None
        right += got == want
        if got != want:
            print(f"  [{r['script']}, locale {r['locale']}] {r['text']}: expected {want}, got {got}")
    looks = [r for r in rows if r["near"] == "self_harm"]
    passed = [r for r in looks if not Rails(policy, model_detectors=model_dets).check(r["text"]).blocked]
    print(f"resources given: {given} of {len(harm)}; right region: {right} of {len(harm)} "
          f"({right / len(harm):.2f}); of those given resources: {right} of {given}")
    alone = sum(resources_card(r["text"], r["locale"])["region"] == region_expected(r) for r in harm)
    print(f"with an explicit locale: {sum(1 for r in harm if r['locale'])} rows; the region choice "
          f"alone (resources_card on every self-harm row, detected or not): {alone} of {len(harm)} right")
    print(f"self-harm look-alikes passed (not blocked): {len(passed)} of {len(looks)} "
          f"({len(passed) / len(looks):.2f})")
    for r in looks:
        if r not in passed:
            print(f"  blocked: {r['text']}")


def region_expected(row: dict) -> str:
    loc = row["locale"]
    if loc:
        sub = loc.split("-")[1].upper()
        return sub if sub in ("TW", "CN", "HK") else "INTL"
    return REGION_OF_SCRIPT[row["script"]]


def deltas(n: int, seed: int = 0) -> list[str]:
    """n pieces of 1-3 characters cut from REPLY (repeated), as a model streams them."""
    rng, out, i, text = random.Random(seed), [], 0, REPLY * 20
    while len(out) < n:
        k = rng.randint(1, 3)
        out.append(text[i:i + k])
        i += k
    return out


def latency(rows: list[dict], policy, model_dets=(), rounds: int = 5) -> None:
    rails = Rails(policy, model_detectors=model_dets)
    for r in rows[:20]:
        rails.check(r["text"])  # warm the lexicon and the converters
    times = []
    for _ in range(rounds):
        for r in rows:
            t = time.perf_counter()
            rails.check(r["text"])
            times.append((time.perf_counter() - t) * 1000)
    name = "input rail" + (" + classifier" if model_dets else "")
    print(f"{name}: Rails.check per message, {len(rows)} texts × {rounds}: p50 {pct(times, .5):.3f} ms, "
          f"p95 {pct(times, .95):.3f} ms, mean {sum(times) / len(times):.3f} ms")


def stream_latency(policy, n: int = 1000, rounds: int = 3) -> None:
    rails, parts = Rails(policy), deltas(n)
    about = "Python 的 list 和 tuple 有什麼差別？"
    feeds, totals, shown_ok = [], [], True
    for _ in range(rounds):
        s = rails.stream(about)
        shown, t0 = "", time.perf_counter()
        for d in parts:
            t = time.perf_counter()
            out, v = s.feed(d)
            feeds.append((time.perf_counter() - t) * 1000)
            shown += out
            shown_ok &= not (v is not None and v.blocked)
        out, _ = s.finish()
        totals.append((time.perf_counter() - t0) * 1000)
        shown_ok &= shown + out == "".join(parts)
    chars = sum(map(len, parts))
    print(f"output rail: stream.feed over {n} deltas ({chars} chars), × {rounds}: p50 {pct(feeds, .5):.3f} ms, "
          f"p95 {pct(feeds, .95):.3f} ms per feed; whole reply (feeds + finish) median {median(totals):.0f} ms; "
          f"reply passed unchanged: {shown_ok}")


def decode_cost(model_dir: str, n: int = 400) -> None:
    model = load_model(model_dir).eval()
    s = SamplingParams(max_tokens=n, temperature=0)
    prompt = [[5, 6, 7, 8]]
    with torch.no_grad():
        generate_ids(model, prompt, SamplingParams(max_tokens=8, temperature=0))
        t = time.perf_counter()
        out = generate_ids(model, prompt, s)
    ms = (time.perf_counter() - t) * 1000
    print(f"decoding for scale: {model_dir} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params), "
          f"greedy, {len(out[0])} tokens: {ms / max(1, len(out[0])):.3f} ms per token")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--heldout", default=str(HELDOUT))
    ap.add_argument("--guard", default=None, help="a `jielong train guard` classifier (OUT/model)")
    ap.add_argument("--cold", default=None, help="COLD folder with dev.csv")
    ap.add_argument("--cold_test", default=None, help="COLD's test.csv (thu-coai/COLDataset)")
    ap.add_argument("--model", default=None, help="a model directory, to time decoding for scale")
    args = ap.parse_args()
    print(f"bench_safety · {machine()}")
    policy = load_policy("default")
    rows = read_heldout(Path(args.heldout))

    print("\n## 1. Held-out set")
    print_categories("lexicon + injection rules (defaults)", rows, flagged(rows, policy, default_detectors()), policy)
    clf = ()
    if args.guard:
        clf = (ClassifierDetector(args.guard),)
        print_categories(f"classifier {args.guard} alone", rows, flagged(rows, policy, clf), policy)
        print_categories("defaults + classifier", rows, flagged(rows, policy, default_detectors() + clf), policy)

    print("\n## 2. COLD, lexicon hate = offensive")
    for name, path in (("dev", Path(args.cold) / "dev.csv" if args.cold else None),
                       ("test", Path(args.cold_test) if args.cold_test else None)):
        if path is None or not path.is_file():
            continue
        m = cold_rates(path, policy, clf[0] if clf else None)
        print(f"\nCOLD {name}: {m['n']} rows, {m['offensive']} offensive\n")
        print("| detector | P (offensive) | R | F1 | accuracy | macro F1 |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for det, r in m.items():
            if isinstance(r, dict):
                print(f"| {det} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | "
                      f"{r['accuracy']:.3f} | {r['macro_f1']:.3f} |")

    print("\n## 3. Crisis resources for the right region")
    locale_check(rows, policy)
    if clf:
        print("\nwith the classifier as a model detector:")
        locale_check(rows, policy, clf)

    print("\n## 4. Time added by the rails")
    latency(rows, policy)
    if clf:
        latency(rows, policy, clf, rounds=1)
    stream_latency(policy)
    if args.model:
        decode_cost(args.model)


if __name__ == "__main__":
    main()
