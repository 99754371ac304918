"""Scoring replies with a reward model: `jielong score`.

Run as:
    jielong score --reward runs/reward/model --data prefs.jsonl
    jielong score --reward runs/reward/model --prompt "今天天氣如何？" --response "晴天，很暖和。"

Rows are single replies {"prompt", "response"} (a "label" is shown beside the score), pairs
{"prompt", "chosen", "rejected"} (does chosen win?) or rankings {"prompt", "responses":
[best, …]} (is the order the model's?). The table lines up Chinese text; `--json` prints one
object a line. The reward model is one `jielong train reward` wrote (`jielong.classifier`).
"""

from __future__ import annotations

import json

from jielong.classifier import load_reward, reward_scores
from jielong.data.preferences import (
    parse_label,
    parse_pair,
    parse_prompt,
    parse_reply,
    parse_responses,
    read_rows,
)
from jielong.errors import UserError
from jielong.eval.classification import pad_text, text_width
from jielong.runtime import pick_device


def _row_to_score(obj: object, where: str, system: str | None) -> dict:
    """{"where", "kind": single|pair|ranking, "prompt", "replies", "label"?} of one row."""
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected a JSON object like {{\"prompt\": …, \"response\": …}}, "
                        f"got {type(obj).__name__}")
    if "chosen" in obj or "rejected" in obj:
        p = parse_pair(obj, where, system)
        return {"where": where, "kind": "pair", "prompt": p.prompt, "replies": [p.chosen, p.rejected]}
    if "responses" in obj:
        prompt, replies = parse_responses(obj, where, system)
        return {"where": where, "kind": "ranking", "prompt": prompt, "replies": replies}
    name = "response" if "response" in obj else "completion" if "completion" in obj else None
    if name is None or "prompt" not in obj:
        keys = ", ".join(map(repr, list(obj)[:8])) or "none"
        raise UserError(f"{where}: nothing to score (keys: {keys}); use {{\"prompt\", \"response\"}} "
                        "(or \"completion\"), or a pair {\"prompt\", \"chosen\", \"rejected\"}")
    row = {"where": where, "kind": "single", "prompt": parse_prompt(obj["prompt"], where, system),
           "replies": [parse_reply(obj[name], where, name)]}
    if "label" in obj:
        row["label"] = parse_label(obj["label"], where)
    return row


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    if text_width(text) <= width:
        return text
    out = ""
    for c in text:
        if text_width(out + c) > width - 1:
            break
        out += c
    return out + "…"


def _shown(row: dict, scores: list[float]) -> str:
    """The reward column: a score (with its 👍/👎 label), or the scores of the replies from
    preferred to least preferred, ✓ when the model orders them so too."""
    if row["kind"] == "single":
        return f"{scores[0]:.3f}" + ("" if "label" not in row else " 👍" if row["label"] else " 👎")
    agrees = all(a > b for a, b in zip(scores, scores[1:], strict=False))
    return ", ".join(f"{s:.3f}" for s in scores) + (" ✓" if agrees else " ✗")


def _table(rows: list[dict], per_row: list[list[float]]) -> str:
    """where | reward | prompt → reply (the first reply), aligned for wide characters."""
    cells = [(row["where"], _shown(row, scores),
              _clip(next((m["content"] for m in reversed(row["prompt"]) if m["role"] == "user"), ""), 24)
              + " → " + _clip(row["replies"][0][-1]["content"], 32))
             for row, scores in zip(rows, per_row, strict=True)]
    cells.insert(0, ("where", "reward (preferred first)", "prompt → reply"))
    w0, w1 = (max(text_width(c[i]) for c in cells) for i in (0, 1))
    return "\n".join(f"{pad_text(a, w0)}  {pad_text(b, w1)}  {c}" for a, b, c in cells)


def _jsonl(obj: dict) -> str:
    return json.dumps(obj, ensure_ascii=False)


def score_cmd(
    reward: str = "runs/reward/model",
    data: list[str] | None = None,
    prompt: str | None = None,
    response: str | None = None,
    system: str | None = None,
    json: bool = False,
    batch_size: int = 16,
    device: str = "auto",
) -> dict:
    """Score replies with a reward model: a JSONL file of rows, or one prompt and response.

    Rows: {"prompt", "response"} (or "completion"; a "label" is shown beside the score),
    pairs {"prompt", "chosen", "rejected"} (both scored: does chosen win?) or rankings
    {"prompt", "responses": [best, …]} (is the order the model's?).

    Args:
        reward: Reward model directory (from `jielong train reward`).
        data: JSONL files of rows to score.
        prompt: The user's message (with --response, instead of --data).
        response: The reply to score (with --prompt).
        system: System prompt for prompts that have none.
        json: Print one JSON object a line instead of a table.
        batch_size: Sequences scored at once.
        device: auto, cpu, cuda, cuda:N or mps.
    """
    if data and (prompt is not None or response is not None):
        raise UserError("give either --data FILE.jsonl or --prompt and --response, not both")
    if not data and prompt is None and response is None:
        raise UserError("nothing to score: give --data FILE.jsonl, or --prompt P --response R")
    if batch_size < 1:
        raise UserError(f"--batch_size={batch_size} must be at least 1")
    if data:
        rows = [_row_to_score(obj, where, system) for where, obj in read_rows(data)]
    else:
        if prompt is None or response is None:
            raise UserError("--prompt and --response go together: give both (the user's message "
                            "and the reply to score)")
        rows = [{"where": "--prompt", "kind": "single",
                 "prompt": parse_prompt(prompt, "--prompt", system),
                 "replies": [parse_reply(response, "--response", "the response")]}]
    model, tok = load_reward(reward, device=pick_device(device))
    convs = [row["prompt"] + reply for row in rows for reply in row["replies"]]
    flat = reward_scores(model, tok, convs, batch_size)
    results, per_row, at = [], [], 0
    for row in rows:
        scores, at = flat[at:at + len(row["replies"])], at + len(row["replies"])
        per_row.append(scores)
        if row["kind"] == "single":
            res = {"where": row["where"], "score": scores[0]}
            if "label" in row:
                res["label"] = row["label"]
        elif row["kind"] == "pair":
            res = {"where": row["where"], "chosen": scores[0], "rejected": scores[1],
                   "margin": scores[0] - scores[1], "agrees": scores[0] > scores[1]}
        else:
            res = {"where": row["where"], "scores": scores,
                   "agrees": all(a > b for a, b in zip(scores, scores[1:], strict=False))}
        results.append(res)
    ranked = [r for r in results if "agrees" in r]
    summary = {"rows": len(rows), "replies": len(flat), "results": results}
    if ranked:
        summary["accuracy"] = sum(r["agrees"] for r in ranked) / len(ranked)
    if json:
        for r in results:
            print(_jsonl(r if data else {"score": r["score"]}))
        return summary
    if not data:
        print(f"reward {flat[0]:.4f}")
        return summary
    print(_table(rows, per_row))
    tail = f"{len(flat):,} replies scored in {len(rows):,} rows"
    if ranked:
        tail += (f"; the model agrees with {sum(r['agrees'] for r in ranked):,} of {len(ranked):,} "
                 f"preferences ({summary['accuracy']:.1%})")
    print(tail)
    return summary
