"""`jielong recipe`: a use case as a YAML file of `jielong` commands, run in order, ending in
the number that measures it.

Run as:
    jielong recipe list
    jielong recipe run recipes/translation.yaml --out runs/translation
    jielong recipe run translation --set base=Qwen/Qwen2.5-1.5B-Instruct steps=500

A recipe (recipes/*.yaml) holds
    description  what it does, on what data, and why its metric;
    vars         named values — `base` (the base model: a Hugging Face folder or hub id), data
                 paths, steps … — used as `${name}` in any string below; `--set name=value`
                 replaces one (the value read as YAML: 2, 0.5, true, null, [a, b]); a var may
                 use the vars above it; `${out}` is the run folder (`--out`, default
                 runs/recipes/NAME);
    steps        each {name, run: the command's words ("train sft", "eval run"), args: its
                 options by name, positionals too (`data: [train.jsonl]`; null leaves an
                 option at its default), creates: a path the step makes};
    metrics      each {name, file: a JSON file, key: a dotted path or a list of keys into it,
                 better: higher | lower, why: why this number}; a key `*` is the one key
                 there (`generate.*.chrf`: the one task's chrF, whatever its file's name).

Steps run in this process through the CLI's own parser and functions: each becomes an argument
list for `jielong.cli.parse`, never a shell line, so a value with a space or a `;` stays one
argument. Every step is checked before the first one runs — the command exists, each arg is one
of its options, the values parse — and a mistake is one line naming recipe:line. A step whose
`creates` path exists is skipped (Ansible's `creates:` rule), so a run stopped in step 3 starts
again at step 3 (a training step starts that step over unless its args say `resume: true`);
`--force` runs every step. A step that ends without making its `creates` path is an error. Each
step's return value is kept in OUT/steps/NAME.json (a metric can read it: SFT's val_loss), and
the metrics are read at the end into OUT/summary.json and OUT/report.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import inspect
import io
import json
import re
import shlex
import time
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from jielong.errors import UserError
from jielong.files import read_yaml, write_json, write_text

RECIPES = Path("recipes")
TOP_KEYS = {"name", "description", "vars", "steps", "metrics"}
STEP_KEYS = {"name", "run", "args", "creates"}
METRIC_KEYS = {"name", "file", "key", "better", "why"}
VAR = re.compile(r"\$\{(\w+)\}")


class Located(dict):
    """A YAML mapping that remembers its line and each key's line (1-based)."""

    line: int = 0
    lines: dict

    def at(self, key: str | None = None) -> int:
        return self.lines.get(key, self.line) if key is not None else self.line


class LineLoader(yaml.SafeLoader):
    """PyYAML's safe loader, with mappings as `Located` and a repeated key an error (PyYAML
    keeps the last silently)."""


def construct_located(loader: LineLoader, node: yaml.MappingNode) -> Located:
    loader.flatten_mapping(node)
    out, lines = Located(), {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in lines:
            raise yaml.constructor.ConstructorError(
                None, None, f"{key!r} is given twice (first on line {lines[key]})",
                key_node.start_mark)
        lines[key] = key_node.start_mark.line + 1
        out[key] = loader.construct_object(value_node, deep=True)
    out.line, out.lines = node.start_mark.line + 1, lines
    return out


LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_located)


@dataclass
class Step:
    name: str
    words: list[str]  # the command's words: ["train", "sft"]
    creates: str
    line: int  # where the step starts in the recipe
    run_line: int = 0  # its `run:` line
    lines: dict = field(default_factory=dict)  # each arg's line
    argv: list[str] = field(default_factory=list)  # what `jielong` would be given
    fn: Callable | None = None
    kwargs: dict = field(default_factory=dict)


@dataclass
class Recipe:
    path: Path
    name: str
    description: str
    vars: dict
    steps: list[Step]
    metrics: list[dict]  # {name, file, key: [..], better, why, line}
    out: Path


# ----------------------------------------------------------------------------- reading


def find(file: str) -> Path:
    """The recipe file: FILE itself, or recipes/FILE.yaml for a bare name."""
    path = Path(file)
    if not path.is_file() and (RECIPES / f"{file}.yaml").is_file():
        return RECIPES / f"{file}.yaml"
    if not path.is_file():
        names = ", ".join(p.stem for p in sorted(RECIPES.glob("*.yaml"))) or "none here"
        raise UserError(f"{file}: no such recipe file (recipes in {RECIPES}/: {names})")
    return path


def read(path: Path) -> Located:
    raw = read_yaml(path, "no such recipe file", loader=LineLoader)
    if not isinstance(raw, Located):
        raise UserError(f"{path}: a recipe is a mapping with description, vars, steps, metrics")
    return raw


def expect(cond: bool, path: Path, line: int, msg: str) -> None:
    if not cond:
        raise UserError(f"{path}:{line}: {msg}")


def parse_sets(sets: list[str] | None, names: list[str], path: Path) -> dict:
    """`--set NAME=VALUE` pairs, each value read as YAML (`2` an int, `[a, b]` a list)."""
    out = {}
    for item in sets or []:
        name, eq, text = item.partition("=")
        if not eq or not name:
            raise UserError(f"--set {item}: write NAME=VALUE, e.g. --set steps=50")
        if name not in names:
            raise UserError(f"--set {name}: {path} has no var {name!r}; its vars: {', '.join(names)}")
        try:
            out[name] = yaml.safe_load(text) if text else ""
        except yaml.YAMLError:
            out[name] = text
    return out


def substitute(value, env: dict, where: str):
    """`value` with every `${name}` replaced; a string that is one `${name}` takes the var's
    own value (a number, a list, null), so `steps: ${steps}` stays an int."""
    if isinstance(value, str):
        whole = VAR.fullmatch(value)
        for name in VAR.findall(value):
            if name not in env:
                raise UserError(f"{where}: ${{{name}}} is not a var of this recipe; its vars: "
                                f"{', '.join(env)}")
            if env[name] is None and not whole:
                raise UserError(f"{where}: ${{{name}}} is null inside {value!r}; give it a value "
                                f"(--set {name}=…)")
        if whole:
            return env[whole.group(1)]
        return VAR.sub(lambda m: str(env[m.group(1)]), value)
    if isinstance(value, list):
        return [substitute(v, env, where) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, env, where) for k, v in value.items()}
    return value


def only(mapping: Located, allowed: set[str], what: str, path: Path) -> None:
    """A key `mapping` may not have (a typo: `arg:` for `args:`) is an error on its line."""
    for k in mapping:
        expect(k in allowed, path, mapping.at(k),
               f"unknown {what} key {k!r}; a {what} has {', '.join(sorted(allowed))}")


def read_step(s, env: dict, path: Path, line: int) -> Step:
    expect(isinstance(s, Located), path, line, "each step is a mapping {name, run, args, creates}")
    only(s, STEP_KEYS, "step", path)
    hints = {"run": " (the command's words, e.g. `train sft`)",
             "creates": " (a path the step makes: a step whose path exists is skipped)"}
    for key in ("name", "run", "creates"):
        expect(isinstance(s.get(key), str) and bool(s[key].strip()), path, s.at(key),
               f"step has no `{key}:`{hints.get(key, '')}")
    expect(re.fullmatch(r"[\w.-]+", s["name"]) is not None, path, s.at("name"),
           f"step name {s['name']!r}: use letters, digits, _ . - (it names OUT/steps/NAME.json)")
    args = s.get("args", Located())
    expect(isinstance(args, Located), path, s.at("args"), "`args:` must be a mapping of option: value")
    step = Step(s["name"], s["run"].split(), substitute(s["creates"], env, f"{path}:{s.at('creates')}"),
                s.line, run_line=s.at("run"), lines={k: args.at(k) for k in args})
    step.kwargs = {k: substitute(v, env, f"{path}:{args.at(k)}") for k, v in args.items()}
    return step


def read_metric_spec(m, env: dict, path: Path, line: int) -> dict:
    expect(isinstance(m, Located), path, line, "each metric is a mapping {name, file, key, better, why}")
    only(m, METRIC_KEYS, "metric", path)
    for key in ("name", "file", "key"):
        expect(key in m, path, m.line, f"metric has no `{key}:`")
    better = m.get("better", "higher")
    expect(better in ("higher", "lower"), path, m.at("better"), "`better:` is higher or lower")
    key = m["key"] if isinstance(m["key"], list) else str(m["key"]).split(".")
    return {"name": str(m["name"]), "file": substitute(m["file"], env, f"{path}:{m.at('file')}"),
            "key": [str(k) for k in key], "better": better, "why": str(m.get("why", "")),
            "line": m.line}


def load(file: str | Path, sets: list[str] | None = None, out: str | None = None) -> Recipe:
    """The recipe in `file` with its vars set and substituted into its steps and metrics (the
    steps not yet checked against the commands: `plan` does that)."""
    path = find(str(file))
    raw = read(path)
    only(raw, TOP_KEYS, "recipe", path)
    for key, kind in (("description", str), ("vars", dict), ("steps", list), ("metrics", list)):
        expect(key in raw, path, raw.line, f"no `{key}:`; a recipe needs description, vars "
               "(base at least), steps and metrics")
        expect(isinstance(raw[key], kind) and bool(raw[key]), path, raw.at(key),
               f"`{key}:` must be a non-empty {'mapping' if kind is dict else kind.__name__}")
    expect("base" in raw["vars"], path, raw.at("vars"),
           "vars has no `base`: name the base model (a Hugging Face folder or hub id)")
    name = str(raw.get("name", path.stem))
    run_dir = Path(out) if out else Path("runs/recipes") / name
    given = parse_sets(sets, list(raw["vars"]), path)
    env: dict = {"out": str(run_dir)}
    for k, v in raw["vars"].items():  # in order: a var may use those above it
        expect(k != "out", path, raw["vars"].at(k), "`out` is the run folder (--out), not a var")
        env[k] = given[k] if k in given else substitute(v, env, f"{path}:{raw['vars'].at(k)}")
    steps: list[Step] = []
    for s in raw["steps"]:
        step = read_step(s, env, path, raw.at("steps"))
        twice = [x.line for x in steps if x.name == step.name]
        expect(not twice, path, step.line, f"step name {step.name!r} is used twice (also on line "
               f"{twice[0] if twice else 0})")
        steps.append(step)
    metrics = [read_metric_spec(m, env, path, raw.at("metrics")) for m in raw["metrics"]]
    return Recipe(path, name, raw["description"].strip(), env, steps, metrics, run_dir)


# ----------------------------------------------------------------------------- planning


def command(table: dict, words: list[str], where: str) -> Callable:
    """The function `jielong WORDS` names in the CLI's command table."""
    target, said = table, []
    for w in words:
        if not isinstance(target, dict):
            break
        if w not in target:
            close = difflib.get_close_matches(w, list(target), n=1)
            raise UserError(f"{where}: unknown command `{' '.join([*said, w])}`"
                            + (f" (did you mean `{' '.join([*said, close[0]])}`?)" if close else "")
                            + f"; commands: {', '.join(target)}")
        target, said = target[w], [*said, w]
    if isinstance(target, dict):
        raise UserError(f"{where}: `{' '.join(words)}` is a group; name one of its commands: "
                        f"{', '.join(' '.join([*words, c]) for c in target)}")
    if said[0] == "recipe":
        raise UserError(f"{where}: a recipe step cannot run a recipe; list that recipe's steps here")
    if len(said) != len(words):
        raise UserError(f"{where}: `{' '.join(said)}` takes no subcommand {words[len(said)]!r}")
    return target


def options(fn: Callable) -> tuple[list[str], set[str]]:
    """(positional parameters in order, option names) of a command, as the CLI builds them:
    a parameter without a default is positional, a dataclass parameter's fields are options."""
    hints = typing.get_type_hints(fn)
    positional, named = [], set()
    for pname, param in inspect.signature(fn).parameters.items():
        tp = hints[pname]
        if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        if dataclasses.is_dataclass(tp):
            named |= {f.name for f in dataclasses.fields(tp)}
        elif param.default is inspect.Parameter.empty:
            positional.append(pname)
        else:
            named.add(pname)
    return positional, named


def argv_of(step: Step, fn: Callable, path: Path) -> list[str]:
    """The command line of a step: positionals in the function's order, then `--name value`."""
    positional, named = options(fn)
    argv = list(step.words)
    for k, v in step.kwargs.items():
        where = f"{path}:{step.lines.get(k, step.line)}"
        if k not in positional and k not in named:
            close = difflib.get_close_matches(k, [*positional, *named], n=1)
            raise UserError(f"{where}: `{' '.join(step.words)}` has no option {k!r}"
                            + (f" (did you mean {close[0]!r}?)" if close else "")
                            + f"; see jielong {' '.join(step.words)} --help")
        if isinstance(v, dict):
            raise UserError(f"{where}: {k}: a mapping is not a command-line value; give a string, "
                            "a number, true/false or a list")
    for p in positional:
        v = step.kwargs.get(p)
        if v is None or v == []:
            raise UserError(f"{path}:{step.line}: step {step.name!r} needs `{p}` in its args "
                            f"(the positional argument of jielong {' '.join(step.words)})")
        argv += [str(x) for x in v] if isinstance(v, list) else [str(v)]
    for k, v in step.kwargs.items():
        if k in positional or v is None:
            continue
        if isinstance(v, bool):
            argv.append(f"--{k}" if v else f"--no-{k}")
        elif isinstance(v, list):
            argv += [f"--{k}", *map(str, v)]
        elif str(v).startswith("-"):  # `--stop=-` : argparse would read a bare "-x" as an option
            argv.append(f"--{k}={v}")
        else:
            argv += [f"--{k}", str(v)]
    return argv


def plan(recipe: Recipe, parse: Callable, table: dict) -> Recipe:
    """Each step checked and bound: its function and keyword arguments from the CLI's own
    parser (whose complaint, on a bad value, becomes a one-line error naming the step)."""
    for step in recipe.steps:
        where = f"{recipe.path}:{step.line}"
        fn = command(table, step.words, f"{recipe.path}:{step.run_line}")
        step.argv = argv_of(step, fn, recipe.path)
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                # only the step's own command group: parsing the whole table is 10× slower
                step.fn, step.kwargs = parse(step.argv, {step.words[0]: table[step.words[0]]})
        except SystemExit:
            said = (err.getvalue().strip().splitlines() or ["the arguments do not parse"])[-1]
            raise UserError(f"{where}: step {step.name!r}: {said.split(': error: ')[-1]}") from None
    return recipe


# ----------------------------------------------------------------------------- running


def jsonable(obj):
    return json.loads(json.dumps(obj, ensure_ascii=False,
                                 default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def read_metric(m: dict, path: Path) -> float:
    where = f"{path}:{m['line']}: metric {m['name']!r}"
    file = Path(m["file"])
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{where}: {file} does not exist; the step that writes it did not run "
                        "or writes elsewhere") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{where}: {file} is not JSON ({e.msg})") from None
    for i, k in enumerate(m["key"]):
        if k == "*" and isinstance(value, dict) and len(value) == 1:  # the one task, whatever its file
            value = next(iter(value.values()))
        elif isinstance(value, list) and k.isdigit() and int(k) < len(value):
            value = value[int(k)]
        elif isinstance(value, dict) and k in value:
            value = value[k]
        else:
            have = ", ".join(map(str, value)) if isinstance(value, dict) else type(value).__name__
            raise UserError(f"{where}: {file} has no {'.'.join(m['key'][:i + 1])} (there: {have})")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UserError(f"{where}: {'.'.join(m['key'])} in {file} is {value!r}, not a number")
    return float(value)


def report_md(summary: dict) -> str:
    def cell(x) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    lines = [f"# Recipe: {summary['recipe']}", "", summary["description"], "",
             f"`{cell(summary['command'])}`", "", "| metric | value | better | from |",
             "| --- | ---: | --- | --- |"]
    for m in summary["metrics"]:
        value = "—" if m["value"] is None else f"{m['value']:.4g}"
        lines.append(f"| {cell(m['name'])} | {value} | {m['better']} | `{m['file']}` "
                     f"{cell('.'.join(m['key']))} |")
    why = [f"- **{m['name']}**: {m['why'].strip()}" for m in summary["metrics"] if m["why"]]
    if why:
        lines += ["", "## Why these metrics", "", *why]
    lines += ["", "## Steps", "", "| # | step | status | seconds | command |", "| ---: | --- | --- | ---: | --- |"]
    for i, s in enumerate(summary["steps"], 1):
        lines.append(f"| {i} | {s['name']} | {s['status']} | {s['seconds']:.1f} | "
                     f"`{cell(s['command'])}` |")
    return "\n".join(lines) + "\n"


def execute(recipe: Recipe, force: bool = False, command_line: str = "") -> dict:
    """Run the planned steps in order (a step whose `creates` exists is skipped unless
    `force`), then read the metrics; writes OUT/steps/*.json, OUT/summary.json, OUT/report.md."""
    out = recipe.out
    (out / "steps").mkdir(parents=True, exist_ok=True)
    n, done, started = len(recipe.steps), [], time.perf_counter()
    print(f"recipe {recipe.name}: {n} steps, run folder {out}", flush=True)
    for i, step in enumerate(recipe.steps, 1):
        head, shown = f"[{i}/{n}] {step.name}", "jielong " + shlex.join(step.argv)
        row = {"name": step.name, "command": shown, "creates": step.creates, "seconds": 0.0}
        if not force and Path(step.creates).exists():
            print(f"{head}: skipped, {step.creates} exists (--force runs it again)", flush=True)
            done.append({**row, "status": "skipped"})
            continue
        print(f"{head}: {shown}", flush=True)
        t0 = time.perf_counter()
        try:
            result = step.fn(**step.kwargs)
        except UserError as e:
            raise UserError(f"{recipe.path}:{step.line}: step {step.name!r} failed: {e}") from None
        write_json(out / "steps" / f"{step.name}.json", jsonable(result))
        if not Path(step.creates).exists():
            raise UserError(f"{recipe.path}:{step.line}: step {step.name!r} finished without "
                            f"making {step.creates}; fix its `creates:` to a path it writes")
        seconds = time.perf_counter() - t0
        print(f"{head}: done in {seconds:.1f}s", flush=True)
        done.append({**row, "status": "ran", "seconds": round(seconds, 2)})
    metrics, errors = [], []
    for m in recipe.metrics:
        try:
            value = read_metric(m, recipe.path)
        except UserError as e:
            value, _ = None, errors.append(e)
        metrics.append({k: m[k] for k in ("name", "file", "key", "better", "why")} | {"value": value})
    summary = {"recipe": recipe.name, "file": str(recipe.path), "description": recipe.description,
               "command": command_line or f"jielong recipe run {recipe.path}", "out": str(out),
               "vars": jsonable(recipe.vars), "steps": done, "metrics": metrics,
               "seconds": round(time.perf_counter() - started, 2)}
    write_json(out / "summary.json", summary)
    write_text(out / "report.md", report_md(summary))
    for m in metrics:
        value = "—" if m["value"] is None else f"{m['value']:.4g}"
        print(f"  {m['name']}: {value} ({m['better']} is better)")
    print(f"summary: {out / 'summary.json'}  report: {out / 'report.md'}")
    if errors:
        raise errors[0]
    return summary


class Recipes:
    """`jielong recipe run` and `jielong recipe list`, given the CLI's parser and command table
    (handed in by the CLI: this module cannot import it, since its command table imports this)."""

    def __init__(self, parse: Callable, commands: Callable[[], dict]):
        self.parse, self.commands = parse, commands

    def check(self, file: str | Path, sets: list[str] | None = None, out: str | None = None) -> Recipe:
        """The recipe read, its vars set, and every step checked against its command."""
        return plan(load(file, sets, out), self.parse, self.commands())

    def run_cmd(self, file: str, set: list[str] | None = None, out: str | None = None,
                force: bool = False) -> dict:
        """Run a use-case recipe: its steps in order, then its metrics into summary.json and report.md.

        Args:
            file: The recipe: a YAML file, or a name in recipes/ (translation, qa …).
            set: NAME=VALUE pairs replacing the recipe's vars, e.g. base=runs/sft/model steps=50.
            out: The run folder (`${out}` in the recipe; default runs/recipes/NAME).
            force: Run every step again, even one whose `creates` path exists.
        """
        recipe = self.check(file, set, out)
        shown = shlex.join(["jielong", "recipe", "run", str(recipe.path),
                            *(["--set", *set] if set else []), *(["--out", out] if out else [])])
        return execute(recipe, force, shown)

    def list_cmd(self, dir: str = "recipes") -> list[dict]:
        """List the recipes in a folder: each one's steps and metrics, checked.

        Args:
            dir: The folder of recipes.
        """
        found = []
        for path in sorted(Path(dir).glob("*.yaml")):
            raw = read_yaml(path, "no such recipe file")
            if not isinstance(raw, dict) or "steps" not in raw:
                print(f"{path.stem:<16} options for --config (e.g. jielong pretrain DATA --config {path})")
                found.append({"name": path.stem, "file": str(path), "kind": "config"})
                continue
            try:
                recipe = self.check(path)
            except UserError as e:
                print(f"{path.stem:<16} INVALID: {e}")
                found.append({"name": path.stem, "file": str(path), "kind": "recipe", "error": str(e)})
                continue
            steps = " → ".join(" ".join(s.words) for s in recipe.steps)
            metrics = "; ".join(m["name"] for m in recipe.metrics)
            first = recipe.description.split("; ")[0].split(". ")[0]
            print(f"{recipe.name:<16} {first}\n{'':<16} steps: {steps}\n{'':<16} metrics: {metrics}\n"
                  f"{'':<16} jielong recipe run {path}")
            found.append({"name": recipe.name, "file": str(path), "kind": "recipe",
                          "steps": [" ".join(s.words) for s in recipe.steps],
                          "metrics": [m["name"] for m in recipe.metrics]})
        if not found:
            raise UserError(f"{dir}: no *.yaml recipes there")
        return found
