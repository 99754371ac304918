"""The demo's tools stage (18): the assistant learns to call a calculator for sums.

Closed-book, the aligned assistant gets few sums right that it never saw (stage 12's RLHF
on arithmetic sharpens the sums it practised, it does not learn to add). A calculator does
not guess. A short SFT of a copy of RUN/assistant on chats in the default chat template's
tool format (Hermes style: the call as <tool_call>{"name": "calculator", "arguments":
{"expression": "7 + 5"}}</tool_call>, the result as a `tool` turn, then the answer
"7 + 5 = 12.") teaches it to copy the sum into a call and the result into its answer; chats
about the world's facts, answered without a call, teach it when not to call. Only the calls
and the answers are learned (data.chat.encode), never the tool's results. The sums are the
SFT data's; the held-out sums (demo/tasks.py's test, in no training data) are asked in
繁/简/English.

The tool list (`TOOLS`) is left out of the demo's prompts: the demo's tokenizer spells its
JSON schema letter by letter, and with the template's instruction it would add ~300 tokens
to a 160-token chat, three times the stage's time; with one tool, the examples are the
lesson. (A real model is given the list: `with_tool(..., tools=TOOLS)`.)

Measured on the held-out sums: the share right (the number after the reply's last "=", as
stage 12 scores it) by the assistant closed-book, as the demo asked it until now, and after
the tool SFT with the calculator: the loop generates, parses the call (jielong.infer.tools), runs
the calculator (jielong.agent.calculator: an ast walk, never `eval`), feeds
the result back as a `tool` message and generates the answer. Also: the share that called
it, of well-formed calls, of calls whose result is the sum's, and of held-out questions
about facts that called the calculator when no sum was asked.
"""

from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path

import torch

from jielong.agent.calculator import calculate
from jielong.checkpoint import load_model, save_model
from jielong.data.chat import encode
from jielong.demo.finetune import bold, pct, share
from jielong.demo.tasks import MATH_QUESTIONS, MATH_WORDS, SYSTEMS, qa_conversations, world_for
from jielong.demo.world import LANGS, MATH_MAX
from jielong.infer.generate import generate_ids
from jielong.infer.sampling import SamplingParams
from jielong.infer.tools import parse
from jielong.rewards import final_number
from jielong.train.common import split
from jielong.train.loop import TrainConfig, fit
from jielong.train.packing import PackedStage, pack

CALCULATOR = {"type": "function", "function": {
    "name": "calculator", "description": "Add, subtract or multiply whole numbers.",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}},
                   "required": ["expression"]}}}
TOOLS = [CALCULATOR]
N_SUMS, N_FACTS = 300, 40  # training chats: sums with a call, facts answered without one
STEPS, LR, BATCH = 320, 3e-3, 4  # measured: bench/RESULTS.md (lr 4e-3, or 200 steps of 8: no copying learnt)
SEQ_LEN = 192  # tokens a row: a sum chat is ~160 (the few longer ones, with a system prompt, are left out)
N_FACT_TEST = 30  # held-out fact questions asked with the tool listed
CALL_MAX, ANSWER_MAX = 90, 24  # new tokens: a call is 74 of the demo tokenizer's, a sum's answer ~12
SUM = re.compile(r"^(\d+) ([+-]) (\d+) = -?\d+[.。]$")


# ---- the calculator and the parser ------------------------------------------------------

def parse_calls(text: str) -> tuple[str, list[dict]]:
    """(text outside the calls, the well-formed calls in OpenAI's shape) of a Hermes reply
    (jielong.infer.tools); a <tool_call> block that is not well formed is left out."""
    got = parse(text, "hermes")
    return got.content.strip(), got.calls


def run_call(call: dict) -> str:
    """The tool's reply to one call: the value, or the error (which goes back to the model)."""
    try:
        args = json.loads(call["function"]["arguments"])
        if call["function"]["name"] != "calculator":
            raise ValueError(f"no tool named {call['function']['name']!r}")
        return calculate(args.get("expression", ""))
    except (ValueError, AttributeError) as e:  # CalcError is a ValueError
        return f"error: {e}"


# ---- data -------------------------------------------------------------------------------

def held_out_sums() -> list[tuple[int, str, int, str]]:
    """(a, op, b, lang) of the SFT test's sums (in no training data), each in one language."""
    out = []
    for item in qa_conversations(world_for(0), seed=0, n_train=0).test:
        if item.kind in ("add", "sub"):
            a, op, b = SUM.match(item.answer_text).groups()[:3]
            out.append((int(a), op, int(b), item.lang))
    return out


def question(a: int, op: str, b: int, lang: str, phrasing: int) -> str:
    forms = MATH_QUESTIONS[lang]
    return forms[phrasing % len(forms)].format(a=a, o=op, b=b, w=MATH_WORDS[lang][op])


def answer(a: int, op: str, b: int, lang: str) -> str:
    return f"{a} {op} {b} = {a + b if op == '+' else a - b}" + ("." if lang == "en" else "。")


def sum_chat(a: int, op: str, b: int, lang: str, phrasing: int, system: str | None = None,
             tools: list[dict] | None = None) -> dict:
    """A sum asked, the calculator called, its result, and the answer (an OpenAI record;
    with "tools" when given)."""
    call = {"id": "call_0", "type": "function", "function": {
        "name": "calculator", "arguments": json.dumps({"expression": f"{a} {op} {b}"})}}
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": question(a, op, b, lang, phrasing)},
                 {"role": "assistant", "content": None, "tool_calls": [call]},
                 {"role": "tool", "tool_call_id": "call_0", "content": str(a + b if op == "+" else a - b)},
                 {"role": "assistant", "content": answer(a, op, b, lang)}]
    return {"messages": messages, **({"tools": tools} if tools else {})}


def tool_chats(n_sums: int | None = None, n_facts: int | None = None, seed: int = 0) -> list[dict]:
    """Training records: sums from the SFT data's (never a held-out one) with a call, and
    one-turn fact chats with the tool listed and answered without a call."""
    n_sums, n_facts = N_SUMS if n_sums is None else n_sums, N_FACTS if n_facts is None else n_facts
    rng = random.Random(f"tools:{seed}")
    held = {(a, op, b) for a, op, b, _ in held_out_sums()}
    pairs = [(a, op, b) for op in "+-" for a in range(MATH_MAX + 1)
             for b in range(MATH_MAX + 1 if op == "+" else a + 1) if (a, op, b) not in held]
    rows = []
    for _ in range(n_sums):
        lang = rng.choice(LANGS)
        system = rng.choice(SYSTEMS[lang]) if rng.random() < 0.25 else None
        rows.append(sum_chat(*rng.choice(pairs), lang, rng.randrange(8), system))
    facts = [r for r in qa_conversations(world_for(0), seed=seed, n_train=4 * n_facts).train
             if len(r["messages"]) <= 3 and "=" not in r["messages"][-1]["content"]]
    rows += [{"messages": r["messages"]} for r in facts[:n_facts]]
    return rng.sample(rows, len(rows))


# ---- the loop ---------------------------------------------------------------------------

@torch.no_grad()
def _generate(model, tok, conversations: list[list[dict]], tools: list[dict] | None,
              max_new: int) -> list[str]:
    stops = tok.end_ids | ({model.config.eos_token_id} - {None})
    greedy = SamplingParams(max_tokens=max_new, temperature=0.0)
    out = []
    for i in range(0, len(conversations), 64):
        prompts = [tok.encode_chat(c, add_generation_prompt=True, tools=tools)[0]
                   for c in conversations[i:i + 64]]
        out += [tok.decode(ids, skip_special_tokens=True).strip()
                for ids in generate_ids(model, prompts, greedy, stops)]
    return out


def with_tool(model, tok, questions: list[str], tools: list[dict] | None = None) -> list[dict]:
    """The tool loop, once per question: generate; if the reply calls the calculator, run
    it, add the call and its result to the chat and generate the answer. Per question: the
    first reply, the calls, the tool's results and the final answer. `tools`: the list the
    chat template writes into the system turn (the demo's model is trained without it)."""
    chats = [[{"role": "user", "content": q}] for q in questions]
    first = _generate(model, tok, chats, tools, CALL_MAX)
    out, again = [], []
    for chat, text in zip(chats, first, strict=True):
        content, calls = parse_calls(text)
        results = [run_call(c) for c in calls]
        out.append({"first": text, "calls": calls, "results": results, "answer": text})
        if calls:
            chat += [{"role": "assistant", "content": content or None, "tool_calls": calls},
                     *[{"role": "tool", "tool_call_id": c["id"], "content": r}
                       for c, r in zip(calls, results, strict=True)]]
            again.append((len(out) - 1, chat))
    for (i, _), text in zip(again, _generate(model, tok, [c for _, c in again], tools, ANSWER_MAX), strict=True):
        out[i]["answer"] = text
    return out



def sum_questions(sums: list[tuple[int, str, int, str]]) -> tuple[list[str], list[int], list[str]]:
    """(questions, values, languages) of the held-out sums, phrasings in turn."""
    qs = [question(a, op, b, lang, i // len(LANGS)) for i, (a, op, b, lang) in enumerate(sums)]
    return qs, [a + b if op == "+" else a - b for a, op, b, _ in sums], [s[3] for s in sums]


def _scores(replies: list[str], values: list[int], langs: list[str]) -> dict:
    ok = [final_number(r) == v for r, v in zip(replies, values, strict=True)]
    return {"right": share(ok),
            "by_lang": {g: share([k for k, x in zip(ok, langs, strict=True) if x == g]) for g in LANGS}}


def closed_book(model, tok, sums: list[tuple[int, str, int, str]]) -> dict:
    """Held-out sums right (the number after the reply's last "="), in all and per language."""
    model.eval()
    qs, values, langs = sum_questions(sums)
    replies = _generate(model, tok, [[{"role": "user", "content": q}] for q in qs], None, ANSWER_MAX)
    return {**_scores(replies, values, langs), "examples": list(zip(qs, replies, strict=True))[:: 17]}


def tool_scores(model, tok, sums: list[tuple[int, str, int, str]], facts: list[str]) -> dict:
    """The held-out sums through the tool loop: right, called, well-formed calls (of the
    replies that began one), calls whose result is the question's, and fact questions
    that called the tool anyway."""
    model.eval()
    qs, values, langs = sum_questions(sums)
    loop = with_tool(model, tok, qs)
    out = _scores([r["answer"] for r in loop], values, langs)
    out["called"] = share([bool(r["calls"]) for r in loop])
    out["well_formed"] = share([bool(r["calls"]) for r in loop if "<tool_call>" in r["first"]])
    out["call_right"] = share([r["results"][:1] == [str(v)] for r, v in zip(loop, values, strict=True)])
    fact_replies = _generate(model, tok, [[{"role": "user", "content": q}] for q in facts], None, CALL_MAX)
    out["facts_called"] = share([bool(parse_calls(t)[1]) for t in fact_replies])
    out["examples"] = [(q, r["first"], r["results"], r["answer"]) for q, r in list(zip(qs, loop, strict=True))[:: 17]]
    return out


def tools_stage(run: Path, tok, device: str, resume: bool = False, steps: int = STEPS) -> dict:
    """Tool-use SFT of a copy of RUN/assistant into RUN/tools/model, measured before (the
    assistant closed-book) and after (closed-book and with the calculator)."""
    print(bold("18. tools") + " — the assistant learns to call a calculator for sums")
    t0 = time.time()
    sums = held_out_sums()
    facts = [i.messages_without_answer[-1]["content"] for i in qa_conversations(world_for(0), seed=0, n_train=0).test
             if i.kind not in ("add", "sub")]
    facts = facts[:: max(1, len(facts) // N_FACT_TEST)][:N_FACT_TEST]
    model = load_model(run / "assistant").to(device)
    before = closed_book(model, tok, sums)
    rows = tool_chats()
    train_r, val_r = split(rows, 0.05, seed=0)
    chats = [encode(tok, r["messages"], tools=r.get("tools")) for r in train_r]
    n_ctx = model.config.max_position_embeddings
    seq_len = min(n_ctx, SEQ_LEN)
    pad = model.config.pad_token_id or 0
    packed = pack(chats, seq_len, pad, seed=0)
    packed_val = pack([encode(tok, r["messages"], tools=r.get("tools")) for r in val_r], seq_len, pad, seed=0)
    print(f"   {sum('tool_calls' in str(r) for r in train_r)} sums with a calculator call + "
          f"{sum('tool_calls' not in str(r) for r in train_r)} fact chats without one, "
          f"{seq_len}-token rows" + (f" ({packed.n_skipped} longer ones left out)" if packed.n_skipped else "")
          + f"; {steps} steps from the aligned assistant")
    cfg = TrainConfig(steps=steps, batch_size=BATCH, lr=LR, warmup_steps=min(5, steps), eval_every=steps,
                      save_every=steps, device=device)
    summary = fit(model, PackedStage(packed, packed_val, cfg), cfg, run / "tools", tokenizer=tok,
                  resume=resume, desc="tools")
    after = tool_scores(model, tok, sums, facts)
    save_model(run / "tools" / "model", model, tok)
    n = {"sums": len(sums), "facts": len(facts), "train": len(train_r)}
    result = {"before": before, "after": after, "n": n, "steps": steps, "val_loss": summary.get("val_loss"),
              "seconds": round(time.time() - t0, 1)}
    for line in table(result):
        print("   " + line)
    return result



def rows_of(r: dict) -> list[tuple[str, list[str]]]:
    """(label, [the assistant closed-book, after the tool SFT with the calculator]) per measure."""
    b, a = r["before"], r["after"]
    out = [("held-out sums right", [pct(b["right"]), pct(a["right"])])]
    out += [(f"  {name}", [pct(b["by_lang"][g]), pct(a["by_lang"][g])])
            for name, g in (("繁", "zh-Hant"), ("简", "zh-Hans"), ("en", "en"))]
    out += [(label, ["—", pct(a[key])]) for label, key in (
        ("calculator called", "called"), ("well-formed calls", "well_formed"),
        ("the call's result is the sum's", "call_right"), ("fact questions: called anyway", "facts_called"))]
    return out


def table(r: dict) -> list[str]:
    lines = [f"held out: {r['n']['sums']} sums in no training data, {r['n']['facts']} fact questions",
             f"{'':34}{'closed-book':>13}{'with the calculator':>21}"]
    return lines + [f"{label:34}{x:>13}{y:>21}" for label, (x, y) in rows_of(r)]


def lesson(r: dict) -> str:
    """What the numbers say, and only that."""
    a = r["after"]
    return (f"The format is the easy part: {pct(a['well_formed'])} of the calls were well-formed "
            f"and {pct(a['facts_called'])} of the fact questions called the calculator. Copying is "
            f"the hard part for a 1M-parameter model: {pct(a['call_right'])} of the calls carried "
            "the question's sum (the others a near miss, 14 + 3 for 15 + 3), and the answer copies "
            "the tool's result most of the time, not always. Fewer steps (200 of 8, or 150 of 4, "
            "bench/RESULTS.md) learnt the format and not the copying.")


def tools_report(r: dict) -> list[str]:
    """report.md's section."""
    cell = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    return [
        "## Tools: a calculator for sums", "",
        f"A copy of the aligned assistant finetuned {r['steps']} steps (into `tools/model/`) on "
        f"{r['n']['train']} chats in the default chat template's tool format (Hermes style): sums "
        "from the SFT data answered by calling a calculator (the call as `<tool_call>`, the result "
        "as a `tool` turn, then the answer) and fact questions answered without a call. Only the "
        "calls and answers were learned, not the results; the tool list stays out of the prompt "
        "(its JSON schema would triple the chats' length for this tokenizer). "
        f"{r['n']['sums']} sums in no training data, in 繁/简/English, asked closed-book and with "
        "the tool (generate, parse the call, run the calculator, feed the result back, generate "
        "the answer); a sum is right when the number after the reply's last \"=\" is.", "",
        "| | the assistant, closed-book | after the tool SFT, with the calculator |", "| --- | --- | --- |",
        *[f"| {label.strip() if not label.startswith('  ') else '&nbsp;&nbsp;' + label.strip()} | "
          + " | ".join(cells) + " |" for label, cells in rows_of(r)], "",
        lesson(r), "",
        "| question | first reply | tool result | answer |", "| --- | --- | --- | --- |",
        *[f"| {cell(q)} | {cell(f)} | {cell(', '.join(res))} | {cell(a)} |"
          for q, f, res, a in r["after"]["examples"]], "",
    ]
