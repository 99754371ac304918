"""Prompting techniques on the demo's model, and step-by-step vs direct SFT for two-fact
questions (issue 20, item 5).

Run as:
    jielong demo --finetune_steps 0 --out runs/prompt-base      # the demo's pretrained model (~5 min)
    .venv/bin/python bench/bench_prompting.py --base runs/prompt-base/model --out runs/bench-prompting

From the demo's pretrained model, SFT as the demo's SFT stage does it (300 steps of 16 packed
128-token rows, lr 1e-3, 20 warm-up steps, `jielong.train.loop.fit`) on three mixes:

    assistant  the demo's Q&A chats (`jielong.demo.finetune.qa_chats`): the demo's assistant,
               never shown a two-fact question
    direct     the same chats + 1,500 two-fact chats answered with the conclusion alone
               ("Mei's best friend lives in Maple.")
    steps      the same chats + the same 1,500 two-fact questions answered step by step
               (fact 1, fact 2, "So …" the conclusion, one line each)

The two-fact questions (`jielong.demo.tasks.multihop_conversations`) hold out a quarter of
the people for each chain in every language, so the 72 test questions ask joins of facts the
model knows (from pretraining and the one-fact chats) but was never asked to join.

(1) Each technique of `jielong prompt` (zero, few, cot, decompose, reflect) on every model,
    on the held-out two-fact and one-fact questions: accuracy and tokens spent.
(2) direct vs steps, over --seeds (the data order; every run starts from the same weights): held-out
    two-fact accuracy, the share of step-by-step replies whose two facts are right, and
    tokens written per answer.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from jielong.checkpoint import load_model, save_model
from jielong.data.chat import encode
from jielong.demo.finetune import SEQ_LEN, qa_chats
from jielong.demo.tasks import answer_sentence, multihop_conversations, multihop_facts, world_for
from jielong.eval.prompting import TECHNIQUES, Generator, question_sets, run_technique, score
from jielong.hub import stop_ids
from jielong.tokenizer import Tokenizer
from jielong.train.common import split
from jielong.train.loop import TrainConfig, fit
from jielong.train.packing import PackedStage, pack


def sft(base: Path, tok, records: list[dict], steps: int, seed: int, run: Path):
    model = load_model(base)
    pad = model.config.pad_token_id or 0
    train_r, val_r = split(records, 0.05, seed=0)
    packed = pack([encode(tok, r["messages"]) for r in train_r], SEQ_LEN, pad, seed)
    packed_val = pack([encode(tok, r["messages"]) for r in val_r], SEQ_LEN, pad, seed)
    cfg = TrainConfig(steps=steps, batch_size=16, lr=1e-3, warmup_steps=20, eval_every=steps,
                      save_every=steps, seed=seed)
    t0 = time.time()
    summary = fit(model, PackedStage(packed, packed_val, cfg), cfg, run, tokenizer=tok, desc=run.name)
    save_model(run / "model", model, tok)
    return model.eval(), {"val_loss": summary.get("val_loss"), "rows": int(packed.inputs.shape[0]),
                          "seconds": round(time.time() - t0)}


def mixes() -> dict[str, list[dict]]:
    base = qa_chats().train
    world = world_for(0)
    out = {"assistant": base}
    for name, steps in (("direct", False), ("steps", True)):
        records = base + multihop_conversations(world, seed=0, steps=steps).train
        random.Random(0).shuffle(records)  # the same order for both: only the replies differ
        out[name] = records
    return out


def chain_right(rows: list[dict]) -> dict:
    """Of the step-by-step replies: both facts stated right, the answer right, and the
    answer right although a fact was wrong (the model did not follow its own steps)."""
    world = world_for(0)
    hops = multihop_conversations(world, seed=0, steps=True)
    people = {p.name.en: p for p in world.people}
    facts_ok = answer_ok = lucky = 0
    for (name, chain, lang), row in zip(hops.held_out, rows, strict=True):
        f1, f2 = multihop_facts(world, people[name], chain)
        reply = row["calls"][-1]["reply"]
        ok = answer_sentence(f1, lang) in reply and answer_sentence(f2, lang) in reply
        facts_ok += ok
        answer_ok += row["correct"]
        lucky += row["correct"] and not ok
    n = len(rows)
    return {"facts_right": facts_ok / n, "answer_right": answer_ok / n, "right_despite_wrong_fact": lucky / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", default="runs/prompt-base/model")
    ap.add_argument("--out", default="runs/bench-prompting")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--shots", type=int, default=2)
    ap.add_argument("--max_new_tokens", type=int, default=64)
    ap.add_argument("--tables", action="store_true", help="print the tables of OUT/results.json and stop")
    args = ap.parse_args()
    if args.tables:
        print(markdown(json.loads((Path(args.out) / "results.json").read_text())))
        return
    torch.set_num_threads(1)
    base, out = Path(args.base), Path(args.out)
    tok = Tokenizer.from_dir(base)
    sets = question_sets("multihop,demo", "data", args.shots, None)
    data = mixes()
    results = {"techniques": {}, "sft": {}, "args": vars(args)}
    runs = [("assistant", args.seeds[0])] + [(n, s) for s in args.seeds for n in ("direct", "steps")]
    for name, seed in runs:
        model, info = sft(base, tok, data[name], args.steps, seed, out / f"{name}-{seed}")
        gen = Generator(model, tok, stop_ids(tok, {}, model.config.eos_token_id), args.max_new_tokens)
        table = {}
        for qs in sets:
            for t in (TECHNIQUES if seed == args.seeds[0] else ("zero",)):
                r, rows = score(qs, t, run_technique(gen, qs, t, args.shots))
                table[f"{qs.name}/{t}"] = r
                if name == "steps" and qs.name == "multihop" and t == "zero":
                    info["chain"] = chain_right(rows)
                if t == "zero":
                    info.setdefault("examples", {})[qs.name] = [(x["question"], x["calls"][-1]["reply"])
                                                                for x in rows[:6]]
                print(f"{name}-{seed} {qs.name} {t}: {r['accuracy']:.3f} "
                      f"({r['tokens_per_question']:.0f} tokens/q, {r['generated_tokens'] / r['n']:.1f} written)",
                      flush=True)
        results["sft"][f"{name}-{seed}"] = {**info, "table": table}
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, ensure_ascii=False, indent=1))
    print(markdown(results))


def markdown(results: dict) -> str:
    """The two tables of bench/RESULTS.md from results.json."""
    sft, seeds = results["sft"], results["args"]["seeds"]
    first = [f"assistant-{seeds[0]}", f"direct-{seeds[0]}", f"steps-{seeds[0]}"]
    lines = ["| technique | " + " | ".join(f"{m.rsplit('-', 1)[0]}: {s}" for m in first for s in ("two-fact", "one-fact"))
             + " |", "|---|" + "---|" * 6]
    for t in TECHNIQUES:
        cells = [f"{sft[m]['table'][f'{s}/{t}']['accuracy']:.1%} ({sft[m]['table'][f'{s}/{t}']['tokens_per_question']:.0f})"
                 for m in first for s in ("multihop", "demo")]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    lines += ["", "| SFT | seed | two-fact held out | one-fact held out | tokens written / answer | "
              "both facts right (steps) | packed rows |", "|---|---|---|---|---|---|---|"]
    for name in ("direct", "steps"):
        for seed in seeds:
            v = sft.get(f"{name}-{seed}")
            if v is None:
                continue
            m, d = v["table"]["multihop/zero"], v["table"]["demo/zero"]
            chain = f"{v['chain']['facts_right']:.1%}" if "chain" in v else "—"
            lines.append(f"| {name} | {seed} | {m['accuracy']:.1%} | {d['accuracy']:.1%} | "
                         f"{m['generated_tokens'] / m['n']:.1f} | {chain} | {v['rows']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
