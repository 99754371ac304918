"""`jielong <command>`: command names mapped to plain functions.

A command's options are its function's signature and docstring: a parameter without a
default is positional (a `list[str]` takes one or more values), `bool` becomes
`--flag/--no-flag`, a dataclass parameter (e.g. `train: TrainConfig`) contributes its fields
as options of their own (`--steps`, `--lr`, …) whose defaults are those of the parameter's
default instance when it has one (so `train sft` and `pretrain` differ in learning rate), the
parameter a function names in its `optional_positional` attribute may be given either way
(`jielong tokenize "…"` or `--text "…"`), and `--config recipe.yaml` supplies any of
them from a YAML file (its keys are the option names; the command line wins).

We build on argparse rather than jsonargparse: with jsonargparse a list positional must be
written `[a,b]` and a boolean `--resume true`, which is not how people type commands.

A `UserError` from any command prints `error: …` on one line and exits with code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import inspect
import re
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path

from jielong import __version__
from jielong.errors import UserError
from jielong.files import read_yaml


def _commands() -> dict:
    # The one place of lazy imports: the command table is built when a command line is
    # parsed, so `jielong --help` and light commands start fast without importing torch
    # stages, datatrove or FastAPI.
    from jielong.agent.command import agent_cmd
    from jielong.demo.run import demo
    from jielong.eval.arena import arena_cmd
    from jielong.eval.command import eval_cmd
    from jielong.eval.compare import compare_cmd
    from jielong.eval.judge import judge_cmd
    from jielong.eval.prompting import prompt_cmd
    from jielong.eval.scores import score_cmd
    from jielong.export.gguf import gguf_cmd
    from jielong.hub import merge_cmd, quantize_cmd
    from jielong.infer.chat import chat
    from jielong.infer.generate import generate
    from jielong.inspect.attention import attention_cmd as inspect_attention
    from jielong.inspect.embeddings import embeddings_cmd
    from jielong.inspect.lens import lens_cmd
    from jielong.inspect.nexttoken import next_cmd as inspect_next
    from jielong.inspect.ngram import train_ngram
    from jielong.inspect.sweep import sweep
    from jielong.inspect.tokens import tokenize_cmd
    from jielong.launch import slurm as launch_slurm
    from jielong.launch import torchrun as launch_torchrun
    from jielong.prep.commands import clean as data_clean
    from jielong.prep.commands import quality_train
    from jielong.prep.commands import stats_cmd as data_stats
    from jielong.rag.commands import ask_cmd as rag_ask
    from jielong.rag.commands import index_cmd as rag_index
    from jielong.rag.commands import search_cmd as rag_search
    from jielong.rag.evaluate import eval_cmd as rag_eval
    from jielong.recipe import Recipes
    from jielong.safety.guard_data import guard
    from jielong.safety.moderate import moderate_cmd
    from jielong.serve.command import serve
    from jielong.serve.feedback import export_cmd as feedback_export
    from jielong.serve.feedback import purge_cmd as feedback_purge
    from jielong.tokenizer import train_cmd
    from jielong.train.classify import classify
    from jielong.train.distill import distill
    from jielong.train.dpo import dpo
    from jielong.train.embed import train_embed
    from jielong.train.kto import kto
    from jielong.train.pretrain import pretrain
    from jielong.train.rerank import train_rerank
    from jielong.train.reward import reward
    from jielong.train.rlhf import rlhf
    from jielong.train.sft import sft

    recipes = Recipes(parse, _commands)  # handed the parser: jielong.recipe cannot import this module
    return {
        "demo": demo,
        "tokenizer": {"train": train_cmd},
        "tokenize": tokenize_cmd,
        "data": {"clean": data_clean, "stats": data_stats, "quality-train": quality_train},
        "pretrain": pretrain,
        "sweep": sweep,
        "launch": {"slurm": launch_slurm, "torchrun": launch_torchrun},
        "generate": generate,
        "chat": chat,
        "agent": agent_cmd,
        "serve": serve,
        "feedback": {"export": feedback_export, "purge": feedback_purge},
        "export": {"gguf": gguf_cmd},
        "train": {"sft": sft, "classify": classify, "distill": distill, "reward": reward,
                  "dpo": dpo, "kto": kto,
                  "rlhf": rlhf, "guard": guard, "embed": train_embed, "rerank": train_rerank,
                  "ngram": train_ngram},
        "merge": merge_cmd,
        "quantize": quantize_cmd,
        "moderate": moderate_cmd,
        "score": score_cmd,
        "prompt": prompt_cmd,
        "rag": {"index": rag_index, "search": rag_search, "ask": rag_ask, "eval": rag_eval},
        "eval": {"run": eval_cmd, "compare": compare_cmd, "judge": judge_cmd, "arena": arena_cmd},
        "recipe": {"run": recipes.run_cmd, "list": recipes.list_cmd},
        "inspect": {"next": inspect_next, "attention": inspect_attention, "embeddings": embeddings_cmd,
                    "lens": lens_cmd},
    }


def _doc_args(fn: Callable) -> tuple[str, dict[str, str]]:
    """(summary, {arg: help}) from a Google-style docstring."""
    doc = inspect.getdoc(fn) or ""
    summary = doc.split("\n\n")[0].strip()
    helps: dict[str, str] = {}
    m = re.search(r"^Args:\n((?:[ \t]+.*\n?)+)", doc, re.M)
    if m:
        name = None
        for line in m.group(1).splitlines():
            hit = re.match(r"\s+(\w+)(?:\s*\(.*?\))?:\s*(.*)", line)
            if hit and (name is None or len(line) - len(line.lstrip()) <= 4):
                name, helps[hit.group(1)] = hit.group(1), hit.group(2)
            elif name:
                helps[name] += " " + line.strip()
    return summary, helps


def _unwrap(tp) -> tuple[type, bool]:
    """(inner type, optional?) for `X | None`."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _add_arg(p: argparse.ArgumentParser, name: str, tp, default, help_: str) -> None:
    tp, _ = _unwrap(tp)
    origin = typing.get_origin(tp)
    flag = "--" + name
    kw: dict = {"help": help_ + (f" (default: {default})" if default not in (None, inspect._empty, [], False) else "")}
    if default is inspect._empty:
        if origin is list:
            p.add_argument(name, nargs="+", type=typing.get_args(tp)[0], help=help_, metavar=name.upper())
        else:
            p.add_argument(name, type=tp, help=help_)
        return
    if tp is bool:
        p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_)
    elif origin is list:
        p.add_argument(flag, nargs="*", action=_ReplaceThenExtend, type=typing.get_args(tp)[0],
                       default=default, **kw)
    elif origin is typing.Literal:
        p.add_argument(flag, choices=typing.get_args(tp), default=default, **kw)
    else:
        p.add_argument(flag, type=tp, default=default, **kw)


class _ReplaceThenExtend(argparse.Action):
    """A list option: `--stop a --stop b` and `--stop a b` both give [a, b], and what the
    command line gives replaces the default list rather than adding to it (argparse's own
    "extend" appends to the default, so `--target_modules q_proj` kept all seven)."""

    def __call__(self, parser, namespace, values, option_string=None):
        seen = namespace.__dict__.setdefault("_given_lists", set())
        current = [] if self.dest not in seen else list(getattr(namespace, self.dest) or [])
        seen.add(self.dest)
        setattr(namespace, self.dest, current + list(values))


def _build(sub: argparse._SubParsersAction, name: str, fn: Callable) -> None:
    summary, helps = _doc_args(fn)
    p = sub.add_parser(name, help=summary, description=inspect.getdoc(fn).split("\n\nArgs:")[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, help="YAML recipe whose keys are this command's options")
    hints = typing.get_type_hints(fn)
    nested: dict[str, type] = {}
    for pname, param in inspect.signature(fn).parameters.items():
        tp, _ = _unwrap(hints[pname])
        if dataclasses.is_dataclass(tp):
            nested[pname] = tp
            group = p.add_argument_group(f"{pname} options ({tp.__name__})")
            dc_hints = typing.get_type_hints(tp)
            _, dc_helps = _doc_args(tp)
            own = param.default if dataclasses.is_dataclass(param.default) else None
            for f in dataclasses.fields(tp):
                if own is not None:  # the command's own defaults, e.g. `train: TrainConfig = SFT_TRAIN`
                    default = getattr(own, f.name)
                else:
                    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                _add_arg(group, f.name, dc_hints[f.name], default, dc_helps.get(f.name, ""))
        elif pname == getattr(fn, "optional_positional", None):
            # A positional that may be left out or given as --name instead (argparse keeps
            # the option's value when the positional is absent: its default is SUPPRESS).
            p.add_argument(pname, nargs="?", default=argparse.SUPPRESS, help=helps.get(pname, ""))
            p.add_argument("--" + pname, dest=pname, type=tp, default=param.default,
                           help=argparse.SUPPRESS)
        else:
            _add_arg(p, pname, hints[pname], param.default, helps.get(pname, ""))
    p.set_defaults(_fn=fn, _nested=nested, _parser=p)


def _parser(commands: dict) -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="jielong", description="接龍: a language model's whole life, "
                                   "from raw text to a served assistant.")
    root.add_argument("--version", action="version", version=f"jielong {_version()}")

    def add(sub, table: dict) -> None:
        for name, target in table.items():
            if isinstance(target, dict):
                group = sub.add_parser(name, help=f"{name} commands").add_subparsers(
                    dest=f"_{name}", required=True, metavar="COMMAND")
                add(group, target)
            else:
                _build(sub, name, target)

    add(root.add_subparsers(dest="_command", required=True, metavar="COMMAND"), commands)
    return root


def _version() -> str:
    return __version__


def _apply_config(args: argparse.Namespace, argv: list[str]) -> None:
    """Values from --config fill the options not given on the command line."""
    path: Path = args.config
    recipe = read_yaml(path, "recipe not found") or {}
    if not isinstance(recipe, dict):
        raise UserError(f"{path}: a recipe must be a mapping of option: value")
    flat: dict = {}
    for k, v in recipe.items():  # `train: {steps: 5}` and `steps: 5` both work
        flat.update(v if k in args._nested and isinstance(v, dict) else {k: v})
    given = {a.split("=")[0].lstrip("-").replace("no-", "", 1) for a in argv if a.startswith("--")}
    for k, v in flat.items():
        if not hasattr(args, k) or k.startswith("_"):
            raise UserError(f"{path}: unknown option {k!r} for this command")
        if k not in given:
            setattr(args, k, v)


def _unknown(args: argparse.Namespace, extra: list[str]) -> None:
    """An option the command does not have: its own usage (not the top-level one), and the
    closest option names."""
    parser: argparse.ArgumentParser = args._parser
    options = [o for a in parser._actions for o in a.option_strings]
    hints = []
    for word in extra:
        close = difflib.get_close_matches(word.split("=")[0], options, n=1, cutoff=0.6)
        if word.startswith("-") and close:
            hints.append(f"{word} (did you mean {close[0]}?)")
        else:
            hints.append(word)
    parser.error(f"unrecognized arguments: {' '.join(hints)}; see {parser.prog} --help")


# A group whose first word may be left out: `jielong eval MODEL …` is `jielong eval run MODEL …`
# (`jielong eval compare …`, `judge …` and `arena …` the group's other commands).
DEFAULT_SUBCOMMAND = {"eval": "run"}


def parse(argv: list[str], commands: dict | None = None) -> tuple[Callable, dict]:
    """The command a command line names and the keyword arguments to call it with; argparse
    exits (status 2 with the command's usage) on a line the command does not take."""
    commands = commands or _commands()
    group = argv[0] if argv else None
    if group in DEFAULT_SUBCOMMAND and isinstance(commands.get(group), dict) and len(argv) > 1 \
            and argv[1] not in commands[group] and argv[1] not in ("-h", "--help"):
        argv = [group, DEFAULT_SUBCOMMAND[group], *argv[1:]]
    root = _parser(commands)
    args, extra = root.parse_known_args(argv)
    if extra:
        _unknown(args, extra) if hasattr(args, "_parser") else root.error(
            f"unrecognized arguments: {' '.join(extra)}")
    if args.config is not None:
        _apply_config(args, argv)
    kwargs = {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "config"}
    for pname, tp in args._nested.items():
        names = {f.name for f in dataclasses.fields(tp)}
        kwargs[pname] = tp(**{k: kwargs.pop(k) for k in names})
    return args._fn, kwargs


def run(argv: list[str] | None = None, commands: dict | None = None):
    fn, kwargs = parse(sys.argv[1:] if argv is None else argv, commands)
    return fn(**kwargs)


def main(argv: list[str] | None = None) -> None:
    try:
        run(argv)
        dist = sys.modules.get("torch.distributed")  # imported by the command, if it needed it
        if dist is not None and dist.is_available() and dist.is_initialized():
            dist.barrier()  # under torchrun: every rank leaves together, the group closed
            dist.destroy_process_group()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:  # 128 + the signal's number, as a shell reports it
        sys.exit(128 + getattr(e, "signum", 2))


if __name__ == "__main__":
    main()
