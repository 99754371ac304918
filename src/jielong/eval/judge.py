"""`jielong eval judge`: two models' answers compared by a judge model, pairwise, each pair
judged in both orders to cancel position bias (MT-Bench), with win/tie/loss, a bootstrap 95%
interval of the win rate, the judge's position consistency, and its agreement with human
arena votes where there are any.

Run as:
    jielong eval judge --a runs/a/answers.jsonl --b runs/b/answers.jsonl --judge Qwen/Qwen2.5-7B-Instruct --out runs/judge/ab
    jielong eval judge --models runs/sft/model runs/dpo/model --questions questions.jsonl --judge_url http://127.0.0.1:8000/v1 --out runs/judge/sft-dpo
    jielong eval judge --votes runs/arena/votes.jsonl --judge_url https://api.example.com/v1 --judge_model gpt-4o --api_key_env OPENAI_API_KEY

What is judged (one of the first two, and/or the third):
- `--a FILE --b FILE`: answer files, JSONL rows with the question ("prompt", "question" or
  "instruction": a string or OpenAI-style messages ending with the user's) and the answer
  ("answer", "response", "output" or "completion"); AlpacaEval's outputs read as they are.
  Rows pair up by "id" (or "question_id") when every row has one, else by order.
- `--models DIR_A DIR_B --questions FILE`: each model answers each question itself, greedily,
  through its chat template (OUT/answers_a.jsonl, OUT/answers_b.jsonl: answer files for later).
- `--votes FILE`: arena votes (`jielong eval arena`'s votes.jsonl, one JSON object a line:
  id, prompt, model_a, model_b, answer_a, answer_b, winner a|b|tie|both_bad, time): the judge
  judges each vote's two answers and its verdicts are set against the people's; `--db FILE`
  reads the same votes straight from the web chat's database (`jielong serve --db`).

The judge: `--judge DIR` (a local model or hub id; default verdict by log-likelihood of
"[[A]]", "[[B]]", "[[C]]", see jielong.eval.judges) or `--judge_url` (any OpenAI-compatible
endpoint; `--judge_model` names the model, the first the server lists by default; the API key
is read from the environment variable `--api_key_env` names, never from the command line).
The prompt, the verdict parsing and the both-orders rule: jielong.eval.verdicts.

Writes OUT/results.json (counts, rates, intervals, consistency, agreement), OUT/report.md (the
same as tables), OUT/judgments.jsonl (every judgment, both orders: the messages sent, the
judge's raw reply or log-likelihoods, the verdict) and OUT/pairs.jsonl (each pair's outcome).
"""

from __future__ import annotations

import gc
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tqdm import tqdm

from jielong.data.preferences import parse_prompt
from jielong.data.readers import iter_records
from jielong.errors import UserError
from jielong.eval.arena import check_vote, load_votes
from jielong.eval.judges import Endpoint, EndpointJudge, LocalJudge, Reply, generate_replies
from jielong.eval.verdicts import (
    agreement,
    both_orders,
    judge_prompt,
    logprob_verdict,
    outcome,
    parse_verdict,
    tally,
)
from jielong.files import write_json, write_text
from jielong.hub import open_model, stop_ids
from jielong.runtime import pick_device

PROMPT_KEYS = ("prompt", "question", "instruction")
ANSWER_KEYS = ("answer", "response", "output", "completion")
MODEL_KEYS = ("model", "generator", "model_id")


@dataclass
class Pair:
    """Two answers to one conversation; `human` is the vote's winner for arena pairs."""
    id: str
    conversation: list[dict]
    answer_a: str
    answer_b: str
    model_a: str
    model_b: str
    human: str | None = None
    where: str = ""
    orders: list[Reply] = field(default_factory=list)


@dataclass
class Row:
    where: str
    id: str | None
    conversation: list[dict] | None
    answer: str | None
    model: str | None


# ----------------------------------------------------------------------------- reading


def read_rows(path: str, need_answer: bool) -> list[Row]:
    """The rows of an answer file (need_answer) or a questions file."""
    rows = []
    for where, obj in iter_records(path):
        if not isinstance(obj, dict):
            raise UserError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        key = next((k for k in PROMPT_KEYS if k in obj), None)
        conversation = None
        if key is not None:
            value = obj[key]
            if key == "instruction" and isinstance(obj.get("input"), str) and obj["input"].strip():
                value = f"{value}\n\n{obj['input']}"  # alpaca's optional input
            conversation = parse_prompt(value, where, what=key)
        elif not need_answer:
            raise UserError(f"{where}: no question: give it a \"question\" (or \"prompt\", "
                            "\"instruction\") field")
        answer = None
        if need_answer:
            akey = next((k for k in ANSWER_KEYS if k in obj), None)
            if akey is None or not isinstance(obj[akey], str):
                raise UserError(f"{where}: no answer: give it an \"answer\" (or \"response\", "
                                "\"output\", \"completion\") field holding a string")
            answer = obj[akey]
        rid = obj.get("id", obj.get("question_id"))
        model = next((obj[k] for k in MODEL_KEYS if isinstance(obj.get(k), str)), None)
        rows.append(Row(where, None if rid is None else str(rid), conversation, answer, model))
    if not rows:
        raise UserError(f"{path}: no rows; one JSON object a line expected")
    return rows


def name_of(path: str, rows: list[Row]) -> str:
    """A model's name: the rows' "model" field, else the answer file's folder."""
    if rows[0].model:
        return rows[0].model
    p = Path(path).resolve()
    return p.parent.name or p.stem


def pair_answers(path_a: str, path_b: str) -> list[Pair]:
    """Pairs from two answer files, by id when every row has one, else by order."""
    rows_a, rows_b = read_rows(path_a, True), read_rows(path_b, True)
    if all(r.id is not None for r in rows_a + rows_b):
        by_id = {}
        for r in rows_b:
            if r.id in by_id:
                raise UserError(f"{r.where}: id {r.id!r} again (first at {by_id[r.id].where}); "
                                "ids must be unique")
            by_id[r.id] = r
        seen: dict[str, str] = {}
        matched = []
        for r in rows_a:
            if r.id in seen:
                raise UserError(f"{r.where}: id {r.id!r} again (first at {seen[r.id]}); ids must "
                                "be unique")
            seen[r.id] = r.where
            if r.id not in by_id:
                raise UserError(f"{r.where}: id {r.id!r} has no answer in {path_b}; both files "
                                "must answer the same questions")
            matched.append((r, by_id[r.id]))
        if len(rows_b) != len(rows_a):
            extra = next(r for r in rows_b if r.id not in seen)
            raise UserError(f"{extra.where}: id {extra.id!r} has no answer in {path_a}; both "
                            "files must answer the same questions")
    else:
        if len(rows_a) != len(rows_b):
            raise UserError(f"{path_a} has {len(rows_a)} answers and {path_b} {len(rows_b)}; "
                            "rows pair up by order, so the counts must match (or give every "
                            "row an \"id\")")
        matched = list(zip(rows_a, rows_b, strict=True))
    name_a, name_b = name_of(path_a, rows_a), name_of(path_b, rows_b)
    if name_a == name_b:
        name_a, name_b = f"{name_a} (a)", f"{name_b} (b)"
    pairs = []
    for i, (ra, rb) in enumerate(matched):
        if ra.conversation and rb.conversation and ra.conversation != rb.conversation:
            raise UserError(f"{rb.where}: its question differs from {ra.where}'s; the rows do not "
                            "answer the same question (give both files an \"id\" per row)")
        conversation = ra.conversation or rb.conversation
        if conversation is None:
            raise UserError(f"{ra.where}: no question in either file: give the rows a "
                            "\"question\" (or \"prompt\", \"instruction\") field")
        pairs.append(Pair(ra.id or str(i), conversation, ra.answer, rb.answer, name_a, name_b,
                          where=ra.where))
    return pairs


def read_votes(path: str) -> list[Pair]:
    """Arena votes from a votes.jsonl (the shared format, each row checked by
    `jielong.eval.arena.check_vote`: a line out of it is a UserError naming file:line)."""
    pairs = [vote_pair(check_vote(obj, where), where) for where, obj in iter_records(path)]
    if not pairs:
        raise UserError(f"{path}: no votes in it")
    return pairs


def db_votes(db: str) -> list[Pair]:
    """The current vote of every arena battle in a chat database (`jielong serve --db`)."""
    pairs = [vote_pair(v, f"{db}: battle {v['id']}") for v in load_votes(db)]
    if not pairs:
        raise UserError(f"{db}: no arena votes in it (vote in the web chat's Arena mode first)")
    return pairs


def vote_pair(v: dict, where: str) -> Pair:
    return Pair(v["id"], parse_prompt(v["prompt"], where), v["answer_a"], v["answer_b"],
                v["model_a"], v["model_b"], human=v["winner"], where=where)


# ----------------------------------------------------------------------------- answering


def answer_questions(model_dir: str, rows: list[Row], max_tokens: int, batch_size: int,
                     device: str, dtype: str) -> list[str]:
    """Greedy answers of one model to every question, through its chat template."""
    net, tok, gen = open_model(model_dir, device=pick_device(device), dtype=dtype)
    stops = stop_ids(tok, gen, net.config.eos_token_id)
    with tqdm(total=len(rows), desc=f"answer {Path(model_dir).name}", unit=" q",
              dynamic_ncols=True) as bar:
        replies = generate_replies(net, tok, stops, [r.conversation for r in rows], max_tokens,
                                   batch_size, bar.update)
    del net
    gc.collect()
    for r, reply in zip(rows, replies, strict=True):
        if reply.error:
            raise UserError(f"{r.where}: {model_dir} cannot answer it: {reply.error}")
    return [r.text for r in replies]


def model_pairs(models: list[str], questions: str, out: Path, max_tokens: int, batch_size: int,
                device: str, dtype: str, limit: int | None = None) -> list[Pair]:
    rows = read_rows(questions, need_answer=False)[:limit]
    names = [Path(m).name or m for m in models]
    if names[0] == names[1]:
        names = [f"{names[0]} (a)", f"{names[1]} (b)"]
    answers = [answer_questions(m, rows, max_tokens, batch_size, device, dtype) for m in models]
    for side, name, texts in zip("ab", names, answers, strict=True):
        write_text(out / f"answers_{side}.jsonl", "".join(
            json.dumps({"id": r.id or str(i), "prompt": r.conversation, "answer": t,
                        "model": name}, ensure_ascii=False) + "\n"
            for i, (r, t) in enumerate(zip(rows, texts, strict=True))))
    return [Pair(r.id or str(i), r.conversation, a, b, names[0], names[1], where=r.where)
            for i, (r, a, b) in enumerate(zip(rows, *answers, strict=True))]


# ----------------------------------------------------------------------------- judging


def judge_pairs(pairs: list[Pair], judge, lang: str, verdict_only: bool) -> list[dict]:
    """Ask `judge` about every pair in both orders; one judgment row per order."""
    prompts = []
    for p in pairs:
        prompts.append(judge_prompt(p.conversation, p.answer_a, p.answer_b, lang, verdict_only))
        prompts.append(judge_prompt(p.conversation, p.answer_b, p.answer_a, lang, verdict_only))
    with tqdm(total=len(prompts), desc="judge", unit=" judgment", dynamic_ncols=True,
              disable=not prompts) as bar:
        replies = judge(prompts, bar.update)
    rows = []
    for i, (prompt, reply) in enumerate(zip(prompts, replies, strict=True)):
        p, swapped = pairs[i // 2], bool(i % 2)
        v = logprob_verdict(reply.logprobs) if reply.logprobs else parse_verdict(reply.text)
        rows.append({"source": "votes" if p.human else "pairs", "id": p.id,
                     "order": "ba" if swapped else "ab",
                     "shown_first": p.model_b if swapped else p.model_a,
                     "shown_second": p.model_a if swapped else p.model_b,
                     "messages": prompt.messages, "reply": reply.text, "logprobs": reply.logprobs,
                     "error": reply.error, "verdict": v, "outcome": outcome(v, swapped)})
    return rows


def pair_rows(pairs: list[Pair], judgments: list[dict]) -> list[dict]:
    out = []
    for i, p in enumerate(pairs):
        ab, ba = judgments[2 * i], judgments[2 * i + 1]
        strict, lenient = both_orders(ab["outcome"], ba["outcome"])
        out.append({"id": p.id, "where": p.where, "model_a": p.model_a, "model_b": p.model_b,
                    "orders": [ab["outcome"], ba["outcome"]],
                    "verdicts": [ab["verdict"], ba["verdict"]],
                    "outcome": strict, "lenient": lenient,
                    **({"human": p.human} if p.human else {})})
    return out


# ----------------------------------------------------------------------------- report


def pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def ci(c) -> str:
    return "" if c is None else f" [{100 * c[0]:.1f}, {100 * c[1]:.1f}]"


def report_md(r: dict) -> str:
    lines = [f"# Judged by {r['judge']}", "",
             f"Verdicts: {r['verdict']} · prompt language: {r['lang']} · each pair judged in both "
             "orders; a model wins only when it wins both (MT-Bench's rule), inconsistent "
             "verdicts count as a tie.", ""]
    t = r.get("pairs")
    if t:
        lines += [f"## {r['model_a']} (A) vs {r['model_b']} (B)", "",
                  "| pairs | A wins | ties | B wins | no verdict | A win rate [95% CI] | "
                  "A score (win + ½ tie) [95% CI] | position consistency |",
                  "|---|---|---|---|---|---|---|---|",
                  f"| {t['pairs']} | {t['a']} | {t['tie']} | {t['b']} | {t['no_verdict']} | "
                  f"{pct(t.get('win_rate_a'))}{ci(t.get('win_rate_a_ci'))} | "
                  f"{pct(t.get('score_a'))}{ci(t.get('score_a_ci'))} | {pct(t['consistency'])} |",
                  "", f"Rates are over the {t['judged']} pairs with a verdict in both orders. "
                  f"The lenient rule (a win and a tie is a win): A {t['lenient_a']}, tie "
                  f"{t['lenient_tie']}, B {t['lenient_b']}. Of the decisive verdicts, "
                  f"{pct(t['first_position_share'])} picked the answer shown first (50% is no "
                  f"position bias); {t['verdicts_missing']} judgments gave no verdict.", ""]
    v = r.get("votes")
    if v:
        ag = v["agreement"]
        lines += ["## Agreement with the arena votes", "",
                  "| setup | votes | agree | rate [95% CI] |", "|---|---|---|---|"]
        for name, label in (("with_tie", "with tie"), ("without_tie", "without tie")):
            a = ag[name]
            lines.append(f"| {label} | {a['n']} | {a['agree']} | {pct(a['rate'])}{ci(a['ci'])} |")
        lines += ["", "| human \\ judge | a | b | tie | no verdict |", "|---|---|---|---|---|"]
        for h, row in ag["confusion"].items():
            lines.append(f"| {h} | {row['a']} | {row['b']} | {row['tie']} | {row['none']} |")
        tv = v["tally"]
        lines += ["", f"{ag['votes']} votes: {ag['both_bad']} both_bad and {ag['no_verdict']} "
                  "without a judge verdict are left out of the rates; \"without tie\" also "
                  "leaves out votes where the human or the judge said tie (FastChat's "
                  f"compute_agreement). Position consistency on the votes: "
                  f"{pct(tv['consistency'])}.", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the command


def judge_cmd(
    a: str | None = None,
    b: str | None = None,
    models: list[str] | None = None,
    questions: str | None = None,
    votes: str | None = None,
    db: str | None = None,
    judge: str | None = None,
    judge_url: str | None = None,
    judge_model: str | None = None,
    api_key_env: str | None = None,
    verdict: Literal["auto", "logprob", "generate"] = "auto",
    lang: Literal["auto", "en", "zh", "zh-hans", "zh-hant"] = "auto",
    out: str = "runs/eval/judge",
    max_tokens: int = 512,
    answer_tokens: int = 256,
    limit: int | None = None,
    batch_size: int = 8,
    workers: int = 4,
    timeout: float = 120.0,
    retries: int = 4,
    samples: int = 2000,
    seed: int = 0,
    device: str = "auto",
    dtype: str = "auto",
) -> dict:
    """Compare two models' answers with a judge model, each pair judged in both orders.

    Args:
        a: answer file of model A (JSONL: a question and an answer a row).
        b: answer file of model B, pairing with --a by "id" or by order.
        models: two model folders (or hub ids) that answer --questions themselves.
        questions: JSONL questions for --models ("question", "prompt" or "instruction").
        votes: arena votes (votes.jsonl of `jielong eval arena`): the judge's agreement with
            the people's winners.
        db: the web chat's database (`jielong serve --db`): its arena votes, as --votes.
        judge: the judge: a local model folder or hub id.
        judge_url: the judge: an OpenAI-compatible endpoint's base URL (…/v1).
        judge_model: the model name to ask the endpoint for (default: the first it lists).
        api_key_env: the environment variable holding the endpoint's API key.
        verdict: logprob (the likeliest of "[[A]]", "[[B]]", "[[C]]"; a local judge only, its
            default) or generate (the judge explains, then writes the verdict; an endpoint's).
        lang: the judge prompt's language: en, zh-hans, zh-hant, zh (the question's script),
            auto (Chinese for a Chinese question, else English).
        out: where results.json, report.md, judgments.jsonl and pairs.jsonl go.
        max_tokens: most tokens the judge writes per judgment (generate).
        answer_tokens: most tokens per answer of --models.
        limit: judge only the first N pairs (and N votes), for a quick look.
        batch_size: prompts generated together by a local model.
        workers: requests sent to the endpoint at once.
        timeout: seconds to wait for one answer of the endpoint.
        retries: retries of a request on a connection error, a timeout, 429 or 5xx.
        samples: bootstrap resamplings for the intervals.
        seed: the bootstrap's random seed.
        device: auto, cpu, cuda, mps (local models).
        dtype: auto, float32, bfloat16, float16 (local models).
    """
    if (judge is None) == (judge_url is None):
        raise UserError("give one judge: --judge DIR (a local model) or --judge_url URL (an "
                        "OpenAI-compatible endpoint)")
    if verdict == "auto":
        verdict = "logprob" if judge else "generate"
    if verdict == "logprob" and judge_url:
        raise UserError("--verdict logprob needs a local judge (--judge DIR): a chat endpoint "
                        "does not score continuations we name; use --verdict generate")
    if (a is None) != (b is None):
        raise UserError("give both answer files, --a FILE --b FILE")
    if models is not None and (len(models) != 2 or questions is None):
        raise UserError("--models takes two model folders, and --questions FILE for them to "
                        "answer")
    if questions is not None and models is None:
        raise UserError("--questions needs --models DIR_A DIR_B to answer them")
    if a is not None and models is not None:
        raise UserError("give answer files (--a, --b) or models (--models, --questions), not both")
    if votes is not None and db is not None:
        raise UserError("give arena votes as --votes FILE or --db FILE, not both")
    if a is None and models is None and votes is None and db is None:
        raise UserError("nothing to judge: give --a FILE --b FILE, --models A B --questions "
                        "FILE, --votes FILE or --db FILE")
    for name, value in (("max_tokens", max_tokens), ("answer_tokens", answer_tokens),
                        ("batch_size", batch_size), ("workers", workers)):
        if value < 1:
            raise UserError(f"--{name} {value}: must be 1 or more")
    if limit is not None and limit < 1:
        raise UserError(f"--limit {limit}: must be 1 or more")
    if samples < 100:
        raise UserError(f"--samples {samples}: use at least 100 bootstrap resamplings")
    if retries < 0 or timeout <= 0:
        raise UserError("--retries must be 0 or more and --timeout more than 0")
    for path in (a, b, questions, votes, db):
        if path is not None and not Path(path).is_file():
            raise UserError(f"{path}: no such file")

    # every input read and checked before any model loads
    pairs = pair_answers(a, b)[:limit] if a else []
    voted = (read_votes(votes) if votes else db_votes(db) if db else [])[:limit]
    if questions:
        read_rows(questions, need_answer=False)
    key = None
    if api_key_env:
        key = os.environ.get(api_key_env)
        if not key:
            raise UserError(f"--api_key_env {api_key_env}: that environment variable is not set "
                            "or empty; export it with the endpoint's key")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if judge_url:
        endpoint = Endpoint(judge_url, key, timeout=timeout, retries=retries)
        listed = endpoint.models()  # unreachable or refused: fails here, before any work
        if judge_model is None:
            if not listed:
                raise UserError(f"{judge_url}/models lists no models; name the judge with "
                                "--judge_model")
            judge_model = listed[0]
        judge_name = f"{judge_model} at {judge_url}"
    else:
        judge_name = judge
    if models:
        pairs = model_pairs(models, questions, out_dir, answer_tokens, batch_size, device,
                            dtype, limit)
    if judge_url:
        judge_fn = EndpointJudge(endpoint, judge_model, max_tokens, workers)
    else:
        net, tok, gen = open_model(judge, device=pick_device(device), dtype=dtype)
        judge_fn = LocalJudge(net, tok, stop_ids(tok, gen, net.config.eos_token_id), verdict,
                              max_tokens, batch_size)
    everything = pairs + voted
    judgments = judge_pairs(everything, judge_fn, lang, verdict == "logprob")
    rows = pair_rows(everything, judgments)
    results: dict = {"judge": judge_name, "verdict": verdict, "lang": lang,
                     "rule": "MT-Bench: a win in both orders wins; inconsistent counts as a tie",
                     "bootstrap": samples}
    if pairs:
        results.update(model_a=pairs[0].model_a, model_b=pairs[0].model_b,
                       pairs=tally(rows[:len(pairs)], samples, seed))
    if voted:
        vrows = rows[len(pairs):]
        results["votes"] = {"file": str(votes or db), "tally": tally(vrows, samples, seed),
                            "agreement": agreement([r["human"] for r in vrows],
                                                   [r["outcome"] for r in vrows], samples, seed)}
    write_json(out_dir / "results.json", results)
    write_text(out_dir / "report.md", report_md(results))
    write_text(out_dir / "judgments.jsonl",
               "".join(json.dumps(j, ensure_ascii=False) + "\n" for j in judgments))
    write_text(out_dir / "pairs.jsonl",
               "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    if pairs:
        t = results["pairs"]
        print(f"{results['model_a']} vs {results['model_b']}: A wins {t['a']}, ties {t['tie']}, "
              f"B wins {t['b']}, no verdict {t['no_verdict']} ({t['pairs']} pairs); A win rate "
              f"{pct(t.get('win_rate_a'))}{ci(t.get('win_rate_a_ci'))}; position consistency "
              f"{pct(t['consistency'])}")
    if voted:
        ag = results["votes"]["agreement"]
        print(f"agreement with {ag['votes']} votes: {pct(ag['with_tie']['rate'])} with tie "
              f"({ag['with_tie']['n']}), {pct(ag['without_tie']['rate'])} without tie "
              f"({ag['without_tie']['n']})")
    print(f"results: {out_dir / 'results.json'}  report: {out_dir / 'report.md'}  "
          f"judgments: {out_dir / 'judgments.jsonl'}")
    return results
