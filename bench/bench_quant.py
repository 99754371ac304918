"""Weight-only int8 / int4 (jielong.quant) against fp32: decode speed, size, and error.

Run as:
    .venv/bin/python bench/bench_quant.py speed --preset 124m --threads 2
    .venv/bin/python bench/bench_quant.py error --model runs/demo/model --text runs/demo/corpus/val.jsonl

speed: random weights of a preset, batch 1, a 32-token prompt and 128 new tokens, greedy;
decode tokens/s = 127 / (time for 128 new tokens - time for 1), each time the fastest of
alternating rounds (the least disturbed by other work on a shared machine); memory is the
model's tensors, disk the saved model.safetensors.
error: a trained model and held-out text: logits of every position of the first documents
against fp32 (max and mean |Δ|), held-out bits per byte (jielong.eval.heldout), and greedy
continuations of 20 prompts (each document's first 6 characters, 32 new tokens) identical
to fp32's. Also with lm_head quantized, which `--quantize` leaves in float.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import torch
from common import machine, timed

from jielong.checkpoint import save_model
from jielong.config import preset
from jielong.data.readers import iter_texts
from jielong.eval.heldout import score_texts, start_id
from jielong.hub import open_model
from jielong.infer.generate import generate_ids
from jielong.infer.sampling import SamplingParams
from jielong.model import Transformer
from jielong.quant import quantize, weight_bytes

METHODS = ("fp32", "int8", "int4")


def variant(model, method: str, lm_head: bool = False, group_size: int = 128):
    if method == "fp32":
        return model
    if method == "bf16":
        return copy.deepcopy(model).to(torch.bfloat16)
    return quantize(copy.deepcopy(model), method, group_size, lm_head=lm_head)


def speed(args) -> None:
    torch.manual_seed(0)
    cfg = preset(args.preset, vocab_size=args.vocab)
    base = Transformer(cfg).eval()
    prompt = torch.randint(1, args.vocab, (1, args.prompt)).tolist()
    models = {m: variant(base, m) for m in args.methods}
    runs = {n: SamplingParams(max_tokens=n, temperature=0) for n in (1, args.new)}
    times = {(m, n): [] for m in models for n in runs}
    for net in models.values():  # warm-up
        generate_ids(net, prompt, runs[args.new])
    for _ in range(args.rounds):
        for m, net in models.items():
            for n, s in runs.items():
                times[m, n] += timed(lambda: generate_ids(net, prompt, s), 1)  # noqa: B023
    print(f"decode, {args.preset} preset ({cfg.num_params / 1e6:.1f}M params, vocab {args.vocab}), "
          f"batch 1, prompt {args.prompt} + {args.new} new tokens, {machine()}")
    ref = None
    for m, net in models.items():
        tps = (args.new - 1) / (min(times[m, args.new]) - min(times[m, 1]))
        ref = ref or tps
        with tempfile.TemporaryDirectory() as d:
            save_model(d, net)
            disk = (Path(d) / "model.safetensors").stat().st_size
        print(f"  {m:5s} {tps:7.1f} tokens/s ({tps / ref:.2f}×)  prefill+1: "
              f"{min(times[m, 1]) * 1e3:6.1f} ms  memory {weight_bytes(net) / 1e6:6.1f} MB  "
              f"disk {disk / 1e6:6.1f} MB")


@torch.no_grad()
def error(args) -> None:
    torch.set_num_threads(args.threads)
    base, tok, _ = open_model(args.model, dtype="float32")
    texts = list(iter_texts([args.text], field="text"))
    docs = texts[:args.docs]
    prompts = [tok.encode(t[:6]) for t in texts[:20]]
    s = SamplingParams(max_tokens=32, temperature=0)
    ref_greedy = generate_ids(base, prompts, s)
    ref_bpb = score_texts(base, tok, docs).bits_per_byte
    ids = [torch.tensor([[start_id(tok)] + tok.encode(t)]) for t in docs]
    ref_logits = [base(x) for x in ids]
    scale = max(r.abs().max().item() for r in ref_logits)
    print(f"error vs fp32: {args.model}, {len(docs)} held-out documents of {args.text} "
          f"({sum(x.shape[1] for x in ids)} positions, fp32 logits up to {scale:.1f}; "
          f"fp32 {ref_bpb:.4f} bits per byte), {machine()}")
    kinds = [("int8", False, None), ("int8", True, None)] + \
        [("int4", head, g) for g in args.groups for head in (False, True)]
    for method, head, g in kinds:
        net = variant(base, method, lm_head=head, group_size=g or 128)
        d = [(net(x) - r).abs() for x, r in zip(ids, ref_logits, strict=True)]
        dmax = max(v.max().item() for v in d)
        dmean = sum(v.sum().item() for v in d) / sum(v.numel() for v in d)
        bpb = score_texts(net, tok, docs).bits_per_byte
        same = sum(a == b for a, b in zip(generate_ids(net, prompts, s), ref_greedy, strict=True))
        name = method + (f" g{g}" if g else "") + (" + lm_head" if head else "")
        print(f"  {name:18s} logits |Δ| max {dmax:.4f} mean "
              f"{dmean:.5f}  bits/byte {bpb:.4f} ({bpb - ref_bpb:+.4f})  greedy identical "
              f"{same}/{len(prompts)}  memory {weight_bytes(net) / 1e6:.2f} MB")


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="what", required=True)
    sp = sub.add_parser("speed")
    sp.add_argument("--preset", default="124m")
    sp.add_argument("--vocab", type=int, default=964)  # the demo tokenizer's
    sp.add_argument("--prompt", type=int, default=32)
    sp.add_argument("--new", type=int, default=128)
    sp.add_argument("--rounds", type=int, default=5)
    sp.add_argument("--threads", type=int, default=2)
    sp.add_argument("--methods", nargs="+", default=list(METHODS))
    ep = sub.add_parser("error")
    ep.add_argument("--model", default="runs/demo/model")
    ep.add_argument("--text", default="runs/demo/corpus/val.jsonl")
    ep.add_argument("--docs", type=int, default=200)
    ep.add_argument("--threads", type=int, default=2)
    ep.add_argument("--groups", type=int, nargs="+", default=[128, 32])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    speed(args) if args.what == "speed" else error(args)


if __name__ == "__main__":
    main()
