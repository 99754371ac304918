"""`jielong rag eval`'s measures on DRCD dev (繁) and CMRC 2018 dev (简), as RESULTS.md reports
them: retrieval by BM25 tokenizer (whitespace, jieba, bigram), cross-script questions, the
decline threshold's calibration, and answers with a model.

Run as:  .venv/bin/python bench/bench_rag_eval.py [--data ../shared/data] [--model runs/demo/assistant]
             [--limit 200] [--embedder DIR]

Every paragraph of a set is the corpus (one chunk each), each question's gold its paragraph
(jielong.rag.evaluate). Cross-script: DRCD's questions converted t2s (简 questions against the
繁 corpus) and CMRC's s2t. With --embedder (an encoder folder, `jielong train embed`) dense and
hybrid rows are added. Answers: the --model answers the first --limit DRCD questions from an
index of 64-token chunks (a small model's context holds no whole DRCD paragraph), greedy,
--max_new_tokens 32.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from jielong.rag.embed import load_embedder
from jielong.rag.evaluate import (
    PARAGRAPH_TOKENS,
    calibrate_gate,
    evaluate_answers,
    evaluate_retrieval,
    read_set,
)
from jielong.rag.index import Index, build_index

SETS = {"drcd-dev.json": "t2s", "cmrc2018-dev.json": "s2t"}


def row(name: str, r: dict) -> str:
    return (f"| {name} | {r['recall@1']:.3f} | {r['recall@5']:.3f} | {r['recall@20']:.3f} | "
            f"{r['mrr']:.3f} | {r['ndcg@20']:.3f} | {r['query_ms']:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--model", default=None)
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--embedder", default=None)
    args = ap.parse_args()
    emb = load_embedder(args.embedder) if args.embedder else None
    tmp = Path(tempfile.mkdtemp(prefix="bench-rag-eval-"))
    print("| set / method | R@1 | R@5 | R@20 | MRR | nDCG@20 | query ms |\n" + "| --- " * 7 + "|")
    for name, other_script in SETS.items():
        path = args.data / name
        questions = read_set(path)
        for tok in ("whitespace", "jieba", "bigram"):
            t0 = time.perf_counter()
            build_index([path], tmp / f"{name}-{tok}", chunk_tokens=PARAGRAPH_TOKENS, overlap=0, tokenizer=tok,
                        embedder=emb if tok == "jieba" else None, progress=False)
            built = time.perf_counter() - t0
            idx = Index.load(tmp / f"{name}-{tok}", embedder=emb)
            r = evaluate_retrieval(idx, questions, "bm25", progress=False)
            print(row(f"{name} / BM25 {tok} (index {built:.1f} s)", r), flush=True)
            if tok == "jieba":
                cross = evaluate_retrieval(idx, questions, "bm25", convert=other_script, progress=False)
                print(row(f"{name} / BM25 jieba, questions {other_script}", cross), flush=True)
                if emb is not None:
                    for method in ("dense", "hybrid"):
                        print(row(f"{name} / {method} {emb.name}",
                                  evaluate_retrieval(idx, questions, method, progress=False)), flush=True)
    drcd, cmrc = read_set(args.data / "drcd-dev.json"), read_set(args.data / "cmrc2018-dev.json")
    cal = calibrate_gate(Index.load(tmp / "drcd-dev.json-jieba"), drcd, cmrc)
    print(f"\ncalibration on DRCD dev (k={cal['k']}): {cal['answerable']} answerable questions, "
          f"{cal['other_set']} CMRC questions ({cal['other_converted']}), the DRCD questions without "
          "their gold paragraph")
    print("| threshold | answerable: gold kept | answerable: any passage kept | CMRC (s2t) declined "
          "| gold removed declined | balanced |\n" + "| --- " * 6 + "|")
    for r in cal["rows"]:
        print(f"| {r['threshold']:.1f} | {r['answerable_kept']:.3f} | {r['answerable_answered']:.3f} | "
              f"{r['other_set_declined']:.3f} | {r['gold_removed_declined']:.3f} | {r['balanced']:.3f} |")
    print(f"pick: {cal['pick']} (the gate now: {cal['current']})")
    if args.model:
        build_index([args.data / "drcd-dev.json"], tmp / "drcd-64", chunk_tokens=64, overlap=0, progress=False)
        summary, rows = evaluate_answers(Index.load(tmp / "drcd-64"), drcd[:args.limit], args.model,
                                         max_new_tokens=32)
        print(f"\nanswers on the first {args.limit} DRCD questions by {args.model}:")
        for key, value in summary.items():
            print(f"  {key}: {value:.3f}" if isinstance(value, float) else f"  {key}: {value}")
        for r in rows[:5]:
            print(f"  {r['question']} → {r.get('reply', '(declined)')!r} (gold {r['answers'][0]})")


if __name__ == "__main__":
    main()
