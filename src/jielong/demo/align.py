"""The demo's alignment stages, after finetuning (see run.py and finetune.py).

The SFT chats answered 30% of Chinese questions in the other script (as data from mixed
sources does), so the assistant sometimes replies in Simplified to a Traditional question or
the reverse. People prefer their own script: a preference SFT did not give.

9.  reward model: rankings (the user's script > the other script > a broken-off reply) train a
    Bradley–Terry reward model on the assistant's body; held-out pairwise accuracy.
10. DPO (LoRA, plus the chosen replies' likelihood) on the same rankings: the share of
    Chinese replies in the user's script, win rate against the SFT model (judged by the reward
    model and by a rule), KL to the SFT model.
11. RLHF (GRPO) with the reward model on the same questions: the same measures.
12. RLHF with a checkable reward (is the sum right?) on arithmetic: accuracy on the sums it
    practised, on other sums from the SFT data, and on sums in no training data.

Each stage runs its own command (`train reward`, `train dpo`, `train rlhf`) in-process on
files written to RUN/align, so the demo exercises exactly what a user runs.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import replace
from pathlib import Path

import torch

from jielong.checkpoint import load_model
from jielong.classifier import load_reward, reward_scores
from jielong.data.chat import IGNORE
from jielong.data.preferences import encode_response
from jielong.demo.finetune import bold, qa_chats, stage_steps
from jielong.demo.tasks import QAItem, script_chars, script_of, script_preferences, world_for
from jielong.eval.replies import chat_replies, contains_answer
from jielong.files import write_text
from jielong.hub import open_model
from jielong.rewards import final_number
from jielong.train.dpo import dpo
from jielong.train.loop import TrainConfig
from jielong.train.reward import reward
from jielong.train.rlhf import RLConfig, rlhf

DPO_LR, DPO_BETA, DPO_SFT, RL_LR, RL_BETA = 1e-3, 0.3, 1.0, 2e-5, 0.04  # DPO: LoRA r 16
MATH_LR = 1e-4  # a checkable reward is exact: a larger step than with a learned reward model
MATH_TURN = re.compile(r"^\d+ [+-] \d+ = -?\d+[.。]$")


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


@torch.no_grad()
def reply_kl(policy, ref, tok, conversations: list[list[dict]]) -> float:
    """Mean per-token KL(policy ‖ ref) over the tokens of each conversation's final reply."""
    total, count = 0.0, 0
    for conv in conversations:
        ids, labels = encode_response(tok, conv[:-1], conv[-1:])
        x = torch.tensor([ids])
        keep = torch.tensor(labels[1:]) != IGNORE  # logits at t predict token t + 1
        lp = policy(x)[0, :-1][keep].float().log_softmax(-1)
        lq = ref(x)[0, :-1][keep].float().log_softmax(-1)
        total += (lp.exp() * (lp - lq)).sum().item()
        count += int(keep.sum())
    return total / max(1, count)


def compare(policy, sft, tok, items, rm, rm_tok, max_new_tokens: int = 32) -> dict:
    """The policy's greedy replies against the SFT model's on the same questions."""

    chars = script_chars(world_for(0))
    prompts = [i.messages_without_answer for i in items]
    policy.eval()
    mine = [r.text for r in chat_replies(policy, tok, prompts, max_new_tokens)]
    theirs = [r.text for r in chat_replies(sft, tok, prompts, max_new_tokens)]

    def ok(reply: str, item) -> bool:
        return script_of(reply, chars) == item.lang

    def scores(replies):
        return reward_scores(rm, rm_tok, [p + [{"role": "assistant", "content": r}]
                                          for p, r in zip(prompts, replies, strict=True)])

    a, b = scores(mine), scores(theirs)
    win_rm = sum(1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(a, b, strict=True))
    win_rule = sum(0.5 if ok(m, i) == ok(t, i) else float(ok(m, i))
                   for m, t, i in zip(mine, theirs, items, strict=True))
    answered = sum(contains_answer(m, i.answer_value) or bool(i.alt_value and contains_answer(m, i.alt_value))
                   for m, i in zip(mine, items, strict=True))
    n = len(items)
    return {"script_match": sum(ok(m, i) for m, i in zip(mine, items, strict=True)) / n,
            "sft_script_match": sum(ok(t, i) for t, i in zip(theirs, items, strict=True)) / n,
            "win_rate_reward_model": win_rm / n, "win_rate_rule": win_rule / n,
            "answered": answered / n, "reward": sum(a) / n, "sft_reward": sum(b) / n,
            "kl_to_sft": reply_kl(policy, sft, tok, [p + [{"role": "assistant", "content": m}]
                                                      for p, m in zip(prompts, mine, strict=True)]),
            "examples": [(p[-1]["content"], t, m) for p, t, m in
                         list(zip(prompts, theirs, mine, strict=True))[:: max(1, n // 4)]]}


def _math_item(record: dict):
    """A held-out sum from an SFT chat: the question, and the answer after "="."""

    q, a = record["messages"][0]["content"], record["messages"][1]["content"]
    value = a.rsplit("=", 1)[1].strip(" .。")
    return QAItem([{"role": "user", "content": q}], a, value, [value], "math", "add")


def math_accuracy(model, tok, items, max_new_tokens: int = 24) -> float:
    model.eval()
    replies = chat_replies(model, tok, [i.messages_without_answer for i in items], max_new_tokens)
    return sum(final_number(r.text) == float(i.answer_value) for r, i in zip(replies, items, strict=True)) / len(items)


def _quiet(fn, *args, **kwargs):
    """Run a command, keeping its progress bars but not its long summary lines."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


def align_stages(run: Path, tok, steps: int, device: str, resume: bool, clock) -> dict:

    align = run / "align"
    sft_dir = run / "sft" / "model"
    world = world_for(0)
    rows, test = script_preferences(world, seed=0, n_train=1200, n_test=120)
    rankings = _jsonl(align / "rankings.jsonl", rows)
    out: dict = {"n_rankings": len(rows), "n_test": len(test)}
    rm_steps, dpo_steps, rl_steps, math_steps = (stage_steps(steps, k) for k in
                                                 ("reward", "dpo", "rlhf", "rlhf_math"))

    print(bold("9. reward model") + " — rankings: a reply in the user's script beats the other script")
    t0 = time.time()
    cfg = TrainConfig(steps=rm_steps, batch_size=16, lr=2e-3, warmup_steps=10, eval_every=rm_steps,
                      save_every=rm_steps, device=device)
    r = _quiet(reward, [str(rankings)], model=str(sft_dir), out=str(run / "reward"), resume=resume,
               train=cfg)
    out["reward"] = {"accuracy": r["accuracy"], "before": r["before"]["accuracy"],
                     "margin": r["margin"], "steps": rm_steps, "pairs": 3 * len(rows)}
    print(f"   {3 * len(rows):,} pairs from {len(rows):,} rankings; held-out pairwise accuracy "
          f"{r['before']['accuracy']:.0%} → {r['accuracy']:.0%} ({time.time() - t0:.0f}s)")
    clock.lap("9. reward model")
    rm, rm_tok = load_reward(run / "reward" / "model")
    sft = load_model(sft_dir).eval()

    print(bold("10. DPO") + " — the assistant learns the preference straight from the rankings")
    t0 = time.time()
    cfg = TrainConfig(steps=dpo_steps, batch_size=16, lr=DPO_LR, warmup_steps=10, eval_every=dpo_steps,
                      save_every=dpo_steps, device=device)
    # Only (the user's script, the other script) pairs: the rankings' (other script, broken
    # off) pairs would teach DPO to raise the other script.
    pairs = _jsonl(align / "pairs.jsonl", [{"prompt": r["prompt"], "chosen": r["responses"][0],
                                            "rejected": r["responses"][1]} for r in rows])
    # LoRA, and the chosen replies' likelihood in the loss (--sft_weight): of the settings
    # tried, these lost the least of what SFT taught (see bench/RESULTS.md).
    _quiet(dpo, [str(pairs)], model=str(sft_dir), out=str(run / "dpo"), beta=DPO_BETA,
           sft_weight=DPO_SFT, method="lora", resume=resume, train=cfg)
    policy = open_model(sft_dir, adapters=[f"dpo={run / 'dpo' / 'adapter'}"])[0]
    out["dpo"] = compare(policy, sft, tok, test, rm, rm_tok)
    out["dpo"]["steps"] = dpo_steps
    _say(out["dpo"], time.time() - t0)
    clock.lap("10. DPO")

    print(bold("11. RLHF") + " — GRPO: sampled replies scored by the reward model")
    t0 = time.time()
    prompts = _jsonl(align / "prompts.jsonl",
                     [{"prompt": p} for p in dict.fromkeys(r["prompt"][0]["content"] for r in rows)])
    rl = RLConfig(group=8, beta=RL_BETA, max_new_tokens=24, eval_prompts=0)
    cfg = TrainConfig(steps=rl_steps, batch_size=8, lr=RL_LR, warmup_steps=0, schedule="constant",
                      weight_decay=0.0, eval_every=rl_steps, save_every=rl_steps, device=device)
    s = _quiet(rlhf, [str(prompts)], model=str(sft_dir), out=str(run / "rlhf"),
               reward_model=str(run / "reward" / "model"), resume=resume, rl=rl, train=cfg)
    out["rlhf"] = compare(load_model(run / "rlhf" / "model"), sft, tok, test, rm, rm_tok)
    out["rlhf"].update(steps=rl_steps, reward_first=s.get("reward_first"), reward_last=s.get("reward_last"),
                       replies_s=s.get("replies_s"))
    _say(out["rlhf"], time.time() - t0)
    clock.lap("11. RLHF")

    print(bold("12. RLHF, checkable reward") + " — arithmetic: 1 for the right sum")
    t0 = time.time()
    qa = qa_chats()
    math_rows = [r for r in qa.train if len(r["messages"]) == 2 and MATH_TURN.match(r["messages"][1]["content"])]
    cut = 2 * len(math_rows) // 3
    sums = _jsonl(align / "sums.jsonl", math_rows[:cut])
    sets = {"practised": [_math_item(r) for r in math_rows[:cut]],  # the RL prompts
            "pool": [_math_item(r) for r in math_rows[cut:]],  # seen in SFT, not RL prompts
            "test": [i for i in qa.test if i.kind in ("add", "sub")]}  # in no training data
    before = {k: math_accuracy(sft, tok, v) for k, v in sets.items()}
    rl = RLConfig(group=8, beta=RL_BETA, max_new_tokens=16, eval_prompts=0)
    cfg = replace(cfg, steps=math_steps, lr=MATH_LR, eval_every=math_steps, save_every=math_steps)
    s = _quiet(rlhf, [str(sums)], model=str(sft_dir), out=str(run / "rlhf-math"), reward_fn="arithmetic",
               resume=resume, rl=rl, train=cfg)
    math_model = load_model(run / "rlhf-math" / "model")
    after = {k: math_accuracy(math_model, tok, v) for k, v in sets.items()}
    out["math"] = {"before": before, "after": after, "n": {k: len(v) for k, v in sets.items()},
                   "steps": math_steps, "reward_first": s.get("reward_first"),
                   "reward_last": s.get("reward_last"),
                   "kl_to_sft": s.get("kl_last")}
    print(f"   sums right: the {cut} practised {before['practised']:.0%} → {after['practised']:.0%}, "
          f"others from SFT {before['pool']:.0%} → {after['pool']:.0%}, never seen "
          f"{before['test']:.0%} → {after['test']:.0%}; training reward "
          f"{s.get('reward_first', 0):.2f} → {s.get('reward_last', 0):.2f} ({time.time() - t0:.0f}s)")
    clock.lap("12. RLHF on arithmetic")
    return out


def _say(r: dict, seconds: float) -> None:
    print(f"   Chinese replies in the user's script {r['sft_script_match']:.0%} (SFT) → "
          f"{r['script_match']:.0%}; win rate vs SFT {r['win_rate_reward_model']:.0%} (reward model), "
          f"{r['win_rate_rule']:.0%} (rule); answered {r['answered']:.0%}; KL to SFT "
          f"{r['kl_to_sft']:.3f} ({seconds:.0f}s)")


def align_report(a: dict) -> list[str]:
    rm, d, r, m = a["reward"], a["dpo"], a["rlhf"], a["math"]
    row = lambda name, k, f: f"| {name} | {f(d[k])} | {f(r[k])} |"  # noqa: E731
    pct = lambda x: f"{x:.1%}"  # noqa: E731
    return [
        "## Alignment", "",
        "The SFT data answered 30% of Chinese questions in the other script, so the assistant "
        "sometimes replies in Simplified to a Traditional question or the reverse. "
        f"{a['n_rankings']:,} synthetic rankings prefer the user's own script (then the other "
        "script, then the answer broken off halfway).", "",
        f"### Reward model ({rm['steps']} steps, {rm['pairs']:,} pairs)", "",
        f"Held-out pairwise accuracy (prompts never seen in training): {rm['before']:.1%} before "
        f"training → **{rm['accuracy']:.1%}** (mean margin {rm['margin']:.2f}).", "",
        f"### DPO (LoRA, {d['steps']} steps) and RLHF with the reward model (GRPO, {r['steps']} steps)",
        "",
        f"{a['n_test']} held-out Chinese questions, greedy replies. A win counts 1, a tie ½; the rule "
        "is \"the reply is in the question's script\".", "",
        "| | DPO | RLHF |", "| --- | --- | --- |",
        f"| Chinese replies in the user's script (SFT model: {pct(d['sft_script_match'])}) | "
        f"{pct(d['script_match'])} | {pct(r['script_match'])} |",
        row("win rate vs SFT, judged by the reward model", "win_rate_reward_model", pct),
        row("win rate vs SFT, judged by the rule", "win_rate_rule", pct),
        row("mean reward (SFT model: " + f"{d['sft_reward']:.2f})", "reward", lambda x: f"{x:.2f}"),
        row("questions answered", "answered", pct),
        row("KL to the SFT model (nats/token)", "kl_to_sft", lambda x: f"{x:.3f}"), "",
        "| question | SFT | DPO |", "| --- | --- | --- |",
        *[f"| {q} | {t} | {m} |" for q, t, m in d["examples"]], "",
        "![RLHF curves](rlhf/rl.png)", "",
        f"### RLHF with a checkable reward: arithmetic ({m['steps']} steps, {m['n']['practised']} sums)",
        "",
        "Reward 1 when the reply's sum is right (0.1 for a wrong number). Greedy replies, sums "
        "right:", "",
        "| sums | SFT model | after RLHF |", "| --- | --- | --- |",
        *[f"| {label} ({m['n'][k]}) | {m['before'][k]:.1%} | **{m['after'][k]:.1%}** |"
          for k, label in (("practised", "the RL prompts"),
                           ("pool", "other sums from the SFT data"),
                           ("test", "sums in no training data"))], "",
        f"Training reward {m['reward_first']:.2f} → {m['reward_last']:.2f}, KL to the SFT model "
        f"{m['kl_to_sft']:.3f}. RLHF sharpens what the model can already sometimes do: the sums "
        "it practised; a model of a million parameters does not learn to add from it.", "",
        "![arithmetic RLHF curves](rlhf-math/rl.png)", "",
    ]
