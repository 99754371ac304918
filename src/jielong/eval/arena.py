"""`jielong eval arena`: the web chat's arena votes as Bradley-Terry ratings with bootstrap
95% intervals, as Chatbot Arena computes its leaderboard (Chiang et al. 2024; FastChat's
fastchat/serve/monitor/rating_systems.py).

Run as:
    jielong eval arena --db runs/serve/feedback.db --out runs/eval/arena --dpo runs/eval/arena/prefs.jsonl
    jielong train dpo runs/eval/arena/prefs.jsonl --model runs/demo/assistant --method lora

The model. Each model i has a strength R_i on the Elo scale, and A beats B with probability
1 / (1 + 10^((R_B - R_A) / 400)): a logistic regression on pair outcomes, fitted by maximum
likelihood. A vote for A is a win of A, a vote for B a win of B, and a tie half a win each
way (as Chatbot Arena's notebook counts ties); "both_bad" is counted as a tie too, as
FastChat's preprocessing counts "tie (bothbad)": neither answer was preferred. Ratings are
reported on the Elo scale, 400 points a factor of 10 in the odds, their mean at 1000 (FastChat
starts from 1000 and then shifts its leaderboard to a reference model; we have none).

Fitting: Newton's method on the log-likelihood of the (model, model) win counts, every
bootstrap round at once (one small linear solve per round and step). FastChat fits it
unpenalised with L-BFGS from zero; here a ridge of 1e-3 (in log-odds units) keeps the
ratings finite when a model never lost (no maximum exists then), and moves a rating fitted
from a handful of votes by about a tenth of a point (tests/eval/test_arena_ratings.py).

Intervals: the votes are drawn with replacement `rounds` times (1,000 by default) and refitted;
the 2.5th and 97.5th percentiles of each model's ratings are its 95% interval (Chatbot
Arena's bootstrap over battles).

Reads each battle's current vote (a re-vote replaces the earlier one) from the chat database
(jielong.serve.store), or, with --votes, a votes.jsonl in the same fixed format (one object a
line: id, prompt, model_a, model_b, answer_a, answer_b, winner, time), e.g. a judge's.
Writes OUT/results.json, OUT/report.md (ratings, intervals, vote counts, win-rate matrix),
OUT/ratings.png and OUT/votes.jsonl; --dpo FILE also writes each vote for A or for B as a DPO
pair {"prompt", "chosen", "rejected"} for `jielong train dpo` (ties and both_bad give none).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from jielong.data.readers import iter_records
from jielong.errors import UserError
from jielong.files import atomic_path, write_json, write_text
from jielong.serve.store import WINNERS, Store

SCALE = 400.0  # Elo points per factor of 10 in the odds
BASE = 1000.0  # the mean rating
RIDGE = 1e-3  # on the log-odds strengths; keeps a model that never lost finite
FIELDS = ("id", "prompt", "model_a", "model_b", "answer_a", "answer_b", "winner", "time")
SCORE = {"a": 1.0, "b": 0.0, "tie": 0.5, "both_bad": 0.5}  # A's share of the win


# ----------------------------------------------------------------------------- reading votes


def read_votes(path: str | Path) -> list[dict]:
    """The votes of a votes.jsonl (the fixed format above), each row checked; a bad row is a
    one-line UserError naming file:line."""
    out = []
    for where, obj in iter_records(path):
        out.append(check_vote(obj, where))
    return out


def check_vote(obj: object, where: str) -> dict:
    if not isinstance(obj, dict):
        raise UserError(f"{where}: a vote is a JSON object with {', '.join(FIELDS)}")
    missing = [k for k in FIELDS if k not in obj]
    if missing:
        raise UserError(f"{where}: a vote needs {', '.join(missing)} (fields: {', '.join(FIELDS)})")
    if obj["winner"] not in WINNERS:
        raise UserError(f"{where}: winner {obj['winner']!r} is not one of {', '.join(WINNERS)}")
    for k in ("id", "model_a", "model_b", "answer_a", "answer_b"):
        if not isinstance(obj[k], str):
            raise UserError(f"{where}: {k} must be a string")
    if isinstance(obj["time"], bool) or not isinstance(obj["time"], int | float):
        raise UserError(f"{where}: time {obj['time']!r} is not a number (unix seconds)")
    if not obj["model_a"] or obj["model_a"] == obj["model_b"]:
        raise UserError(f"{where}: model_a and model_b must be two different model names")
    prompt = obj["prompt"]
    if not isinstance(prompt, list) or not prompt or not all(
            isinstance(m, dict) and isinstance(m.get("content"), str) and
            m.get("role") in ("system", "user", "assistant") for m in prompt) or \
            prompt[-1]["role"] != "user":
        raise UserError(f"{where}: prompt must be a list of {{role, content}} messages ending "
                        "with the user's")
    return obj


def load_votes(db: str | Path) -> list[dict]:
    """Every battle's current vote in the chat database `db`, in the fixed format (not those
    of conversations the user deleted, as `jielong feedback export` leaves them out)."""
    with Store(db, create=False) as store:
        return store.arena_votes(include_deleted=False)


# ----------------------------------------------------------------------------- Bradley-Terry


def models_of(votes: list[dict]) -> list[str]:
    """The models that took part, in the order they first appear."""
    return list(dict.fromkeys(m for v in votes for m in (v["model_a"], v["model_b"])))


def pairs(votes: list[dict], models: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(index of A, index of B, A's score: 1, 0 or 0.5) of every vote."""
    index = {m: i for i, m in enumerate(models)}
    a = np.array([index[v["model_a"]] for v in votes], dtype=np.int64)
    b = np.array([index[v["model_b"]] for v in votes], dtype=np.int64)
    score = np.array([SCORE[v["winner"]] for v in votes])
    return a, b, score


def win_counts(a: np.ndarray, b: np.ndarray, score: np.ndarray, p: int,
               weights: np.ndarray | None = None) -> np.ndarray:
    """wins[..., i, j]: how often i beat j (a tie counts half); `weights` (rounds, votes):
    how many times each vote is drawn in each round."""
    w = np.ones((1, len(a))) if weights is None else np.atleast_2d(weights)
    wins = np.zeros((len(w), p * p))
    np.add.at(wins.T, a * p + b, (w * score).T)
    np.add.at(wins.T, b * p + a, (w * (1 - score)).T)
    wins = wins.reshape(len(w), p, p)
    return wins[0] if weights is None else wins


def fit(wins: np.ndarray, ridge: float = RIDGE, steps: int = 100, tol: float = 1e-9) -> np.ndarray:
    """Bradley-Terry strengths in log-odds units (mean 0) maximising
    sum_ij wins_ij log sigmoid(s_i - s_j) - ridge / 2 |s|^2, for each [..., p, p] of `wins`."""
    wins = np.asarray(wins, dtype=float)
    games = wins + np.swapaxes(wins, -1, -2)
    p = wins.shape[-1]
    s = np.zeros(wins.shape[:-1])
    for _ in range(steps):
        with np.errstate(over="ignore"):
            prob = 1 / (1 + np.exp(s[..., None, :] - s[..., :, None]))  # i beats j
        grad = (wins - games * prob).sum(-1) - ridge * s
        w = games * prob * (1 - prob)
        hess = w - np.eye(p) * (w.sum(-1)[..., None] + ridge)  # negative definite
        step = np.linalg.solve(hess, grad[..., None])[..., 0]
        big = np.abs(step).max(-1, keepdims=True)
        step *= np.minimum(1, 4 / np.maximum(big, 1e-300))  # damped: at most 4 a step
        s = s - step
        if big.max() < tol:
            break
    return s


def elo(strength: np.ndarray) -> np.ndarray:
    """Log-odds strengths on the Elo scale: SCALE points per factor of 10, mean BASE."""
    s = strength - strength.mean(-1, keepdims=True)
    return BASE + SCALE * s / math.log(10)


def ratings(votes: list[dict], models: list[str] | None = None) -> dict[str, float]:
    """{model: Elo-scale rating} fitted to `votes` (dicts with model_a, model_b, winner)."""
    models = models or models_of(votes)
    wins = win_counts(*pairs(votes, models), len(models))
    return dict(zip(models, elo(fit(wins)).tolist(), strict=True))


def bootstrap(votes: list[dict], models: list[str], rounds: int, seed: int) -> np.ndarray:
    """Ratings refitted on `rounds` resamplings of the votes (with replacement): (rounds, p).
    Votes of the same (A, B, outcome) are interchangeable, so a round draws how many of each
    kind it takes (a multinomial, as FastChat's compute_bootstrap_bt does)."""
    a, b, score = pairs(votes, models)
    kinds, counts = np.unique(np.stack([a, b, (2 * score).astype(np.int64)], 1), axis=0,
                              return_counts=True)
    draws = np.random.default_rng(seed).multinomial(len(votes), counts / len(votes), size=rounds)
    return elo(fit(win_counts(kinds[:, 0], kinds[:, 1], kinds[:, 2] / 2, len(models), draws)))


def arena_results(votes: list[dict], rounds: int = 1000, seed: int = 0) -> dict:
    """Ratings with 95% intervals, vote counts and the win-rate matrix of `votes`."""
    models = models_of(votes)
    if len(models) < 2:
        raise UserError(f"the votes name {len(models)} model; ratings need votes between two "
                        "or more models")
    a, b, score = pairs(votes, models)
    p = len(models)
    wins = win_counts(a, b, score, p)
    point = elo(fit(wins))
    boot = bootstrap(votes, models, rounds, seed)
    lo, hi = np.percentile(boot, [2.5, 97.5], axis=0)
    games = wins + wins.T
    rows = []
    for i, m in enumerate(models):
        mine = [v for v in votes if m in (v["model_a"], v["model_b"])]
        won = sum(v["winner"] == ("a" if v["model_a"] == m else "b") for v in mine)
        lost = sum(v["winner"] == ("b" if v["model_a"] == m else "a") for v in mine)
        rows.append({"model": m, "rating": float(point[i]), "ci": [float(lo[i]), float(hi[i])],
                     "votes": len(mine), "wins": won, "losses": lost,
                     "ties": sum(v["winner"] == "tie" for v in mine),
                     "both_bad": sum(v["winner"] == "both_bad" for v in mine)})
    order = sorted(range(p), key=lambda i: -point[i])
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = wins / games
    return {
        "votes": len(votes), "winners": {w: sum(v["winner"] == w for v in votes) for w in WINNERS},
        "ratings": [rows[i] for i in order],
        "win_rate": {"models": [models[i] for i in order],
                     "rate": [[None if games[i, j] == 0 else float(rate[i, j]) for j in order]
                              for i in order],
                     "battles": [[int(round(games[i, j])) for j in order] for i in order]},
        "method": {"model": "Bradley-Terry, maximum likelihood", "scale": SCALE, "base": BASE,
                   "ridge": RIDGE, "ties": "half a win each way; both_bad counted as a tie",
                   "rounds": rounds, "seed": seed, "interval": "bootstrap percentile 2.5-97.5"},
    }


# ----------------------------------------------------------------------------- outputs


def dpo_rows(votes: list[dict]) -> list[dict]:
    """Each vote for A or for B as {"prompt", "chosen", "rejected"} (the fixed prompt, and the
    answers as one assistant message each); ties, both_bad, blank or equal answers give none."""
    out = []
    for v in votes:
        if v["winner"] not in ("a", "b"):
            continue
        won, lost = (v["answer_a"], v["answer_b"]) if v["winner"] == "a" else \
            (v["answer_b"], v["answer_a"])
        if not won.strip() or not lost.strip() or won == lost:
            continue
        out.append({"prompt": v["prompt"], "chosen": [{"role": "assistant", "content": won}],
                    "rejected": [{"role": "assistant", "content": lost}]})
    return out


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")


def report_md(result: dict, source: str) -> str:
    lines = ["# Arena ratings", "",
             f"{result['votes']} votes from `{source}`: " +
             ", ".join(f"{n} {w}" for w, n in result["winners"].items()) + ".", "",
             "| rank | model | rating | 95% CI | votes | won | lost | tie | both bad |",
             "|---|---|---|---|---|---|---|---|---|"]
    for k, r in enumerate(result["ratings"], 1):
        lines.append(f"| {k} | {r['model']} | {r['rating']:.0f} | {r['ci'][0]:.0f} – "
                     f"{r['ci'][1]:.0f} | {r['votes']} | {r['wins']} | {r['losses']} | "
                     f"{r['ties']} | {r['both_bad']} |")
    wr = result["win_rate"]
    lines += ["", "Win rate of the row's model against the column's (ties count half; battles "
              "in brackets):", "", "| | " + " | ".join(wr["models"]) + " |",
              "|---|" + "---|" * len(wr["models"])]
    for m, rates, games in zip(wr["models"], wr["rate"], wr["battles"], strict=True):
        cells = ["—" if r is None else f"{r:.2f} ({g})" for r, g in zip(rates, games, strict=True)]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    meth = result["method"]
    lines += ["", f"Bradley-Terry fitted by maximum likelihood, on the Elo scale ({meth['scale']:.0f} "
              f"points a factor of 10 in the odds, mean {meth['base']:.0f}); a tie and a "
              f"both-bad vote count half a win each way. Intervals: percentile bootstrap over "
              f"the votes, {meth['rounds']} rounds (seed {meth['seed']}).", ""]
    return "\n".join(lines)


def ratings_png(result: dict, path: Path) -> Path:
    rows = result["ratings"][::-1]  # the best on top
    fig = Figure(figsize=(6.5, 1.2 + 0.45 * len(rows)), dpi=110)
    ax = fig.subplots()
    y = np.arange(len(rows))
    x = [r["rating"] for r in rows]
    err = np.array([[r["rating"] - r["ci"][0], r["ci"][1] - r["rating"]] for r in rows]).T
    ax.errorbar(x, y, xerr=err, fmt="o", color="#0f7a62", ecolor="#4c72b0", capsize=4)
    ax.set_yticks(y, [f"{r['model']} ({r['votes']})" for r in rows])
    ax.axvline(BASE, ls=":", c="grey", lw=1)
    ax.set(xlabel="rating (Elo scale) with 95% bootstrap interval",
           title=f"Arena: {result['votes']} votes")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def arena_cmd(db: str = "runs/serve/feedback.db", out: str = "runs/eval/arena",
              dpo: str | None = None, rounds: int = 1000, seed: int = 0,
              votes: str | None = None) -> dict:
    """Rate the models of the web chat's arena from its votes (Bradley-Terry, Elo scale).

    Args:
        db: The chat database `jielong serve` wrote (see its --db).
        out: Where results.json, report.md, ratings.png and votes.jsonl go.
        dpo: Also write each vote for A or B as a DPO pair to this .jsonl file.
        rounds: Bootstrap resamplings of the votes, for the intervals.
        seed: The bootstrap's random seed.
        votes: Read this votes.jsonl (the same format as OUT/votes.jsonl) instead of --db.
    """
    if rounds < 100:
        raise UserError(f"--rounds {rounds}: use at least 100 bootstrap resamplings")
    if dpo is not None and Path(dpo).suffix.lower() != ".jsonl":
        raise UserError(f"--dpo {dpo}: give a .jsonl file (one JSON row a line), which "
                        "`jielong train dpo` reads")
    source = votes or db
    found = read_votes(votes) if votes else load_votes(db)
    if not found:
        raise UserError(f"{source}: no arena votes yet; vote in the web chat's Arena mode "
                        "(`jielong serve --adapter NAME=DIR` serves a second model)")
    result = arena_results(found, rounds, seed)
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    write_json(d / "results.json", result)
    write_text(d / "report.md", report_md(result, str(source)))
    ratings_png(result, d / "ratings.png")
    write_jsonl(d / "votes.jsonl", found)
    print(report_md(result, str(source)))
    if dpo is not None:
        pairs_ = dpo_rows(found)
        write_jsonl(Path(dpo), pairs_)
        result["dpo"] = len(pairs_)
        print(f"{len(pairs_)} DPO pairs (votes for A or B) in {dpo}")
    print(f"arena: {d / 'report.md'}  chart: {d / 'ratings.png'}  votes: {d / 'votes.jsonl'}")
    return result
