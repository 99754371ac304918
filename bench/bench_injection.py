"""The prompt-injection rules (jielong.safety.injection) on their held-out set: precision,
recall and false-positive rate per script (繁/简/en), and the time to scan a thousand texts.

Run as:  .venv/bin/python bench/bench_injection.py

injection_texts/heldout.tsv: attacks (overrides, jailbreak personas, system-prompt requests,
fake role tags, orders to send data away) and benign texts with hard negatives, hand-labelled.
"""

from __future__ import annotations

import time

from jielong.safety.injection import SCRIPTS, labelled, rates, scan


def main() -> None:
    rows = labelled()
    print("| script | n | precision | recall | FPR |")
    print("| --- | ---: | ---: | ---: | ---: |")
    names = {"hant": "繁", "hans": "简", "en": "en"}
    for script in (*SCRIPTS, "all"):
        r = rates([row for row in rows if script in ("all", row[1])])
        print(f"| {names.get(script, script)} | {r['n']} | {r['precision']:.2f} | {r['recall']:.2f} | {r['fpr']:.2f} |")
    texts = [t for _, _, t in rows] * (1000 // len(rows) + 1)
    t0 = time.perf_counter()
    for t in texts[:1000]:
        scan(t)
    print(f"scan: {(time.perf_counter() - t0) * 1000:.0f} ms per 1000 texts (mean {sum(map(len, texts[:1000])) / 1000:.0f} chars)")


if __name__ == "__main__":
    main()
