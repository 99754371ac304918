"""Eval tasks scored during training (`--eval_tasks`), beside the validation loss: multiple-choice
benchmarks by log-likelihood, and generation tasks (drcd, cmrc2018, KIND:FILE) by the model's
greedy replies, as `jielong eval` runs them.

    jielong train sft chats.jsonl --model runs/demo/model --eval_tasks cmmlu,exams/mine \\
        --eval_data data --eval_shots 0 --eval_limit 5 --eval_every 50

The questions, prompts and scoring are `jielong eval`'s (`jielong.eval.command`:
`encode_task`, `check_fits`, `score_task` (a subject's shared prefix once, 16 questions a pass),
`summarize`; `jielong.eval.loglikelihood.pick`): every task is read, encoded and checked against the model's context once, before
the first step — a missing folder, a bad CSV line or a prompt longer than the context is one
line and exit code 2 before any training — and scored again at every evaluation (every
--eval_every steps and at the end), logged in metrics.jsonl as `eval/TASK/acc` (the mean
over questions, results.json's `acc`). The number equals `jielong eval` on that step's
checkpoint with the same --shots and --limit (tests/train/test_eval_tasks.py); acc_norm is
not logged, as with lettered choices it equals acc (lm-eval divides by len("A")). A generation
task logs its headline scores (`eval/drcd/em`, `eval/drcd/f1`, `eval/translate:news/bleu` …),
its replies written by rank 0 on `jielong eval`'s engine and the numbers sent to every rank.

The loop calls the scorer with the model in eval mode and puts it back in train mode; the
scorer runs in the model's own dtype, without the loop's autocast, as `jielong eval` loads a
checkpoint. Under torchrun every rank scores every world-th batch and all gather the scores
(as `jielong eval` shares them), so each question is scored once, in a world-th of the time.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from jielong.errors import UserError
from jielong.eval.benchmarks import LETTERS, Task, tasks_from
from jielong.eval.command import check_fits, encode_task, score_task, summarize
from jielong.eval.generation import HEADLINE, run_generation
from jielong.eval.gentasks import GenTask, split_tasks
from jielong.eval.loglikelihood import pick
from jielong.hub import stop_ids
from jielong.model import Transformer

BATCH_SIZE = 16  # questions a forward pass, as `jielong eval --batch_size`


def check_tasks(names: str, data: str, limit: int | None = None) -> tuple[list[Task], list[GenTask]]:
    """(multiple-choice tasks, generation tasks), every file read (errors name file:line); two
    tasks of one name refused."""
    choice_names, generated = split_tasks(names, data, limit)
    tasks = tasks_from(choice_names, data) if choice_names else []
    seen: set[str] = set()
    for t in [*tasks, *generated]:
        if t.name in seen:
            raise UserError(f"--eval_tasks {names!r}: two tasks are named {t.name!r} (folders of one "
                            "name); rename one folder")
        seen.add(t.name)
    return tasks, generated


def language_model(model: torch.nn.Module) -> Transformer | None:
    """The causal LM inside what the loop trains: itself, or PPO's policy under its value head."""
    for m in (model, getattr(model, "policy", None)):
        if isinstance(m, Transformer):
            return m
    return None


class TaskScorer:
    """Tasks encoded once for `tok` and a context of `n_ctx` tokens; call it with a model."""

    def __init__(self, names: str, data: str, shots: int, limit: int | None, tok, n_ctx: int):
        self.tasks, self.generated = check_tasks(names, data, limit)
        self.tok = tok
        self.items = {}
        for task in self.tasks:
            self.items[task.name] = encode_task(tok, task, shots, limit)
            check_fits(tok, task, self.items[task.name], shots, n_ctx)
        self.shots, self.limit = shots, limit

    def describe(self) -> str:
        choice = [f"{t.name} ({len(self.items[t.name]):,} questions)" for t in self.tasks]
        written = [f"{t.name} ({len(t.items):,} questions, generated)" for t in self.generated]
        return ", ".join(choice + written) + (f", {self.shots}-shot" if choice else "")

    @torch.no_grad()
    def __call__(self, model: Transformer, rank: int = 0, world: int = 1) -> dict[str, float]:
        """{"eval/TASK/acc": …} for every task; under torchrun every rank must call it."""
        out = {}
        for task in self.tasks:
            items = self.items[task.name]
            right: dict[str, list[bool]] = {}
            for (subject, q, _, conts), scores in zip(
                    items, score_task(model, items, BATCH_SIZE, rank=rank, world=world), strict=True):
                best, _ = pick(scores, list(LETTERS[:len(conts)]))
                right.setdefault(subject.name, []).append(best == q.answer)
            # acc_norm is acc's twin for lettered choices; summarize wants both
            per_subject = {name: {"n": len(r), "acc": sum(r) / len(r), "acc_norm": sum(r) / len(r)}
                           for name, r in right.items()}
            out[f"eval/{task.name}/acc"] = summarize(per_subject, task)["acc"]
        if self.generated:  # rank 0 writes the replies (greedy, on the engine); every rank logs them
            scores = [None]
            if rank == 0:
                stops = stop_ids(self.tok, {}, model.config.eos_token_id)
                results, _ = run_generation(model, self.tok, stops, self.generated, limit=self.limit)
                scores = [{f"eval/{name}/{key}": t[key] for name, t in results.items()
                           for key, _ in HEADLINE[t["kind"]]}]
            if world > 1:
                dist.broadcast_object_list(scores, src=0)
            out.update(scores[0])
        return out
