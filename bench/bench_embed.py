"""`jielong train embed` on real question–passage sets, on a CPU, from a random small BERT:
how far contrastive training alone moves held-out retrieval in a couple of minutes.

    python bench/bench_embed.py                               # DRCD (繁) and CMRC 2018 (简) dev
    python bench/bench_embed.py --sets cmrc2018-dev.json --steps 300 --hidden 128

The encoder is a 2-layer BERT of width `--hidden` with a character vocabulary (each Han
character a token, as bert-base-chinese splits Chinese) built from the set itself, mean
pooled; no pretrained weights, so the figures are what the stage adds to nothing. 10% of the
paragraphs are held out with their questions; recall@1/5 and MRR are of each held-out
question's paragraph among all held-out paragraphs, before and after (the stage's own report).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from jielong.encoder import char_wordpiece, random_encoder
from jielong.train.embed import train_embed
from jielong.train.loop import TrainConfig

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def char_bert(texts: list[str], out: Path, hidden: int, seed: int = 0, layers: int = 2) -> Path:
    return random_encoder(char_wordpiece(texts, words=False), out, hidden=hidden, layers=layers,
                          pooling="mean", seed=seed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", default="drcd-dev.json,cmrc2018-dev.json")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    a = ap.parse_args()
    print("| set | steps | seconds | recall@1 before → after | recall@5 | MRR |\n| --- | --- | --- | --- | --- | --- |")
    for name in a.sets.split(","):
        doc = json.loads((a.data / name).read_text(encoding="utf-8"))
        texts = [p["context"] + "".join(q["question"] for q in p["qas"])
                 for art in doc["data"] for p in art["paragraphs"]]
        with tempfile.TemporaryDirectory() as tmp:
            base = char_bert(texts, Path(tmp) / "bert", a.hidden)
            t = time.time()
            r = train_embed(str(a.data / name), model=str(base), out=str(Path(tmp) / "run"), max_len=256,
                            train=TrainConfig(steps=a.steps, batch_size=32, lr=a.lr, warmup_steps=10,
                                              eval_every=a.steps, save_every=a.steps, device="cpu"))
            b, f = r["before"], r["after"]
            print(f"| {name} | {a.steps} | {time.time() - t:.0f} | {b['recall@1']:.3f} → {f['recall@1']:.3f} | "
                  f"{b['recall@5']:.3f} → {f['recall@5']:.3f} | {b['mrr']:.3f} → {f['mrr']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
