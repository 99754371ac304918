"""Hybrid retrieval against BM25 and dense alone, with an encoder trained here on a CPU, and the
cross-encoder reranker on top: does (weighted) reciprocal rank fusion reach the best single method?

    python bench/bench_rag_hybrid.py --data ../shared/data --out runs/bench-rag-hybrid
    python bench/bench_rag_hybrid.py --weights 0.05,0.02,0.01   # again, other weights only
    python bench/bench_rag_hybrid.py --layers 4 --hidden 128 --steps 600 --rerank_steps 200

1. An encoder: a random character-vocabulary BERT (bench_embed.char_bert: --layers, --hidden;
   no pretrained weights exist offline) trained by `jielong train embed` on CMRC 2018 dev (简),
   mean pooled. Optionally a reranker (`jielong train rerank`) from that encoder, also on CMRC
   (its [CLS] is flat, so the loss sits at ln 4 for long: bench_rag_rerank.py starts the
   reranker from a [CLS]-pooled encoder and measures it over BM25 and dense).
2. The test set: DRCD dev (繁, another set: no question or paragraph is shared), converted whole
   to 简 with OpenCC t2s (paragraphs, titles, questions, answers), since the encoder's
   vocabulary is CMRC's 简 characters and its tokenizer does not fold scripts (BM25 folds to 简
   itself, so its figures equal plain DRCD's).
3. `jielong rag eval` (jielong.rag.evaluate.eval_cmd) on one index of DRCD-简 (a paragraph a
   chunk, with the encoder's vectors): bm25, dense, hybrid at each --weights (Σ w_m / (60 +
   rank), BM25's weight 1), and BM25's top --rerank_n rescored by the reranker.

Each step is skipped when its output is already in OUT, so the evaluation can be rerun alone.
Run it with OMP_NUM_THREADS=1 on a shared CPU: two torch threads on a busy 2-core box made
each query's embedding 230 ms instead of 6 ms.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from bench_embed import char_bert

from jielong.files import write_json
from jielong.prep.language import converter
from jielong.rag.embed import load_embedder
from jielong.rag.evaluate import PARAGRAPH_TOKENS, eval_cmd
from jielong.rag.index import build_index
from jielong.train.embed import train_embed
from jielong.train.loop import TrainConfig
from jielong.train.rerank import train_rerank

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def to_hans(src: Path, dst: Path) -> Path:
    """The SQuAD-style file `src` with every text converted t2s."""
    conv = converter("t2s").convert
    doc = json.loads(src.read_text(encoding="utf-8"))
    for art in doc["data"]:
        art["title"] = conv(art.get("title", ""))
        for p in art["paragraphs"]:
            p["context"] = conv(p["context"])
            for q in p["qas"]:
                q["question"] = conv(q["question"])
                for a in q.get("answers", []):
                    a["text"] = conv(a["text"])
    write_json(dst, doc)
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=Path("runs/bench-rag-hybrid"))
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--max_len", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--rerank_steps", type=int, default=0)
    ap.add_argument("--rerank_n", type=int, default=20)
    ap.add_argument("--weights", default="1,0.5,0.3,0.2,0.1,0.05,0.02,0.01")
    a = ap.parse_args()
    torch.set_flush_denormal(True)  # tiny gradients once the loss is near 0 are denormal floats: 10x slower on x86
    a.out.mkdir(parents=True, exist_ok=True)
    train_set = a.data / "cmrc2018-dev.json"
    embed_dir, rerank_dir = a.out / "embed" / "model", a.out / "rerank" / "model"
    if not (embed_dir / "config.json").is_file():
        doc = json.loads(train_set.read_text(encoding="utf-8"))
        texts = [p["context"] + "".join(q["question"] for q in p["qas"])
                 for art in doc["data"] for p in art["paragraphs"]]
        base = char_bert(texts, a.out / "base", a.hidden, layers=a.layers)
        t = time.time()
        train_embed(str(train_set), model=str(base), out=str(a.out / "embed"), max_len=a.max_len,
                    train=TrainConfig(steps=a.steps, batch_size=32, lr=a.lr, warmup_steps=20,
                                      eval_every=a.steps, save_every=a.steps, device="cpu"))
        print(f"embed: {a.steps} steps in {time.time() - t:.0f} s", flush=True)
    if a.rerank_steps and not (rerank_dir / "config.json").is_file():
        t = time.time()
        train_rerank(str(train_set), model=str(embed_dir), out=str(a.out / "rerank"), max_len=2 * a.max_len,
                     train=TrainConfig(steps=a.rerank_steps, batch_size=8, lr=a.lr / 2, warmup_steps=20,
                                       eval_every=a.rerank_steps, save_every=a.rerank_steps, device="cpu"))
        print(f"rerank: {a.rerank_steps} steps in {time.time() - t:.0f} s", flush=True)
    test_set = a.out / "drcd-dev-hans.json"
    if not test_set.is_file():
        to_hans(a.data / "drcd-dev.json", test_set)
    index = a.out / "index"
    if not (index / "manifest.json").is_file():
        build_index([test_set], index, embedder=load_embedder(str(embed_dir)),
                    chunk_tokens=PARAGRAPH_TOKENS, overlap=0)
    runs = [("bm25", {}), ("dense", {})] + [
        ("hybrid", {"dense_weight": float(w)}) for w in a.weights.split(",")]
    if (rerank_dir / "config.json").is_file():
        runs.append(("bm25", {"reranker": str(rerank_dir), "rerank_n": a.rerank_n}))
    print("| method | R@1 | R@5 | R@20 | MRR | nDCG@20 | query ms |\n| --- | --- | --- | --- | --- | --- | --- |")
    for method, extra in runs:
        r = eval_cmd(str(test_set), index=str(index), method=method, embedder=str(embed_dir),
                     **extra)["retrieval"]
        name = method + "".join(f" {k}={Path(str(v)).name}" for k, v in extra.items())
        print(f"| {name} | {r['recall@1']:.3f} | {r['recall@5']:.3f} | {r['recall@20']:.3f} | {r['mrr']:.3f} "
              f"| {r['ndcg@20']:.3f} | {r['query_ms']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
