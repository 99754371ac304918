"""The cross-encoder reranker, trained here on a CPU, on top of BM25 and of the dense encoder:
how much does reordering the first stage's top 20 gain, and what does it add to a query?

    python bench/bench_rag_rerank.py --data ../shared/data --out runs/bench-rag-rerank
    python bench/bench_rag_rerank.py --questions 0          # again, every DRCD question scored

1. Two encoders as bench_rag_hybrid's (a random 2-layer, width-64 BERT with CMRC's character
   vocabulary, `jielong train embed` on CMRC 2018 dev, 简, 400 steps): one mean pooled, the
   dense first stage (as in the hybrid table), and one pooled by [CLS] (`--pooling cls`), the
   reranker's start: its head reads the [CLS] state, which a mean-pooled or random encoder
   leaves nearly the same for every pair (the loss then sits at ln(1 + negatives)).
2. A reranker, `jielong train rerank` from the [CLS] encoder, also on CMRC 2018 dev: one
   positive and --negatives others (the first from the same article), query + passage cut
   to --rerank_max_len tokens.
3. The test set: DRCD dev (繁, no question or paragraph shared with CMRC) converted to 简 with
   OpenCC t2s (bench_rag_hybrid.to_hans), one index of its paragraphs with the encoder's
   vectors. For BM25 and for dense: recall@1/5/20, MRR and the query time, alone and with
   the top --rerank_n reordered by the reranker (`Index.load(..., reranker=)`, as
   `jielong rag eval --reranker` does), on the same --questions questions drawn with a fixed
   seed (every paragraph stays in the corpus; 0: all 3,524).

Each step is skipped when its output is already in OUT. Run it with OMP_NUM_THREADS=1 on a
shared CPU (see bench_rag_hybrid); the training steps take about as long with 2 threads.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from bench_embed import char_bert
from bench_rag_hybrid import to_hans

from jielong.files import write_json
from jielong.rag.embed import load_embedder
from jielong.rag.evaluate import PARAGRAPH_TOKENS, evaluate_retrieval, read_set
from jielong.rag.index import Index, build_index
from jielong.rag.rerank import Reranker
from jielong.train.embed import train_embed
from jielong.train.loop import TrainConfig
from jielong.train.rerank import train_rerank

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=Path("runs/bench-rag-rerank"))
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--max_len", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--rerank_steps", type=int, default=200)
    ap.add_argument("--rerank_lr", type=float, default=1.5e-3)
    ap.add_argument("--rerank_max_len", type=int, default=160)
    ap.add_argument("--negatives", type=int, default=3)
    ap.add_argument("--rerank_n", type=int, default=20)
    ap.add_argument("--questions", type=int, default=1000)
    a = ap.parse_args()
    torch.set_flush_denormal(True)  # tiny gradients near a loss of 0 are denormal floats: 10x slower on x86
    a.out.mkdir(parents=True, exist_ok=True)
    train_set = a.data / "cmrc2018-dev.json"
    embed_dir, cls_dir, rerank_dir = (a.out / d / "model" for d in ("embed", "embed-cls", "rerank"))
    took = {}
    for pooling, folder in (("mean", embed_dir), ("cls", cls_dir)):
        if not (folder / "config.json").is_file():
            doc = json.loads(train_set.read_text(encoding="utf-8"))
            texts = [p["context"] + "".join(q["question"] for q in p["qas"])
                     for art in doc["data"] for p in art["paragraphs"]]
            base = char_bert(texts, a.out / "base", 64, layers=2)
            t = time.time()
            train_embed(str(train_set), model=str(base), out=str(folder.parent), max_len=a.max_len, pooling=pooling,
                        train=TrainConfig(steps=a.steps, batch_size=32, lr=a.lr, warmup_steps=20,
                                          eval_every=a.steps, save_every=a.steps, device="cpu"))
            took[f"embed_{pooling}_s"] = time.time() - t
    if not (rerank_dir / "config.json").is_file():
        t = time.time()
        train_rerank(str(train_set), model=str(cls_dir), out=str(rerank_dir.parent), max_len=a.rerank_max_len,
                     negatives=a.negatives,
                     train=TrainConfig(steps=a.rerank_steps, batch_size=8, lr=a.rerank_lr, warmup_steps=20,
                                       eval_every=a.rerank_steps, save_every=a.rerank_steps, device="cpu"))
        took["rerank_s"] = time.time() - t
    print(", ".join(f"{k} {v:.0f}" for k, v in took.items()) or "models: already trained", flush=True)
    test_set = a.out / "drcd-dev-hans.json"
    if not test_set.is_file():
        to_hans(a.data / "drcd-dev.json", test_set)
    embedder = load_embedder(str(embed_dir))
    index = a.out / "index"
    if not (index / "manifest.json").is_file():
        build_index([test_set], index, embedder=embedder, chunk_tokens=PARAGRAPH_TOKENS, overlap=0)
    questions = read_set(test_set)
    if 0 < a.questions < len(questions):
        questions = sorted(random.Random(0).sample(questions, a.questions), key=lambda q: q.id)
    plain = Index.load(index, embedder=embedder)
    reranked = Index.load(index, embedder=embedder, reranker=Reranker.load(rerank_dir), rerank_n=a.rerank_n)
    rows = []
    print(f"DRCD-简 dev, {len(questions)} questions\n| method | R@1 | R@5 | R@20 | MRR | query ms |\n"
          "| --- | --- | --- | --- | --- | --- |")
    for method in ("bm25", "dense"):
        for name, idx in ((method, plain), (f"{method} + rerank top {a.rerank_n}", reranked)):
            r = evaluate_retrieval(idx, questions, method, k=20)
            rows.append({"name": name, **r})
            print(f"| {name} | {r['recall@1']:.3f} | {r['recall@5']:.3f} | {r['recall@20']:.3f} | {r['mrr']:.3f} "
                  f"| {r['query_ms']:.1f} |", flush=True)
    write_json(a.out / "results.json", {"args": {k: str(v) for k, v in vars(a).items()}, "took": took,
                                        "rows": rows})


if __name__ == "__main__":
    main()
