"""The shape of the house: no import cycles inside `jielong`, no private name taken from
another module, no training stage importing another, imports at the top of the file (the
CLI's command table aside), and every module docstring's "Run as:" line a command that runs.
"""

from __future__ import annotations

import ast
import inspect
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from jielong import cli

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
STAGES = {"pretrain", "sft", "classify", "distill", "reward", "dpo", "kto", "rlhf"}


def modules(src: Path, package: str) -> dict[str, Path]:
    """Dotted module name → file, for every module of `package` under `src`."""
    out = {}
    for f in sorted((src / package).rglob("*.py")):
        parts = list(f.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = f
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> list[tuple[str, str, ast.stmt]]:
    """(module imported, name taken or "", the statement) for each import of a known module;
    `from a.b import c` counts as importing a.b.c when that is a module, else a.b."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, "", node) for a in node.names if a.name in known]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x / from ..a import b
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for a in node.names:
                full = f"{base}.{a.name}"
                if full in known:
                    found.append((full, "", node))
                elif base in known:
                    found.append((base, a.name, node))
    return found


def graph(src: Path, package: str) -> dict[str, set[str]]:
    known = modules(src, package)
    return {m: {t for t, _, _ in imports(m, f, known) if t != m} for m, f in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_planted_cycle(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import g\n")  # inside a function too
    (pkg / "c.py").write_text("import pkg.a\n")
    (pkg / "d.py").write_text("from pkg import a\n")
    assert cycles(graph(tmp_path, "pkg")) == [["pkg.a", "pkg.c", "pkg.sub.b"]]
    (pkg / "c.py").write_text("")
    assert cycles(graph(tmp_path, "pkg")) == []


def test_no_import_cycles():
    assert cycles(graph(SRC, "jielong")) == []


def test_no_private_name_taken_from_another_module():
    known = modules(SRC, "jielong")
    taken = [f"{m} takes {n} from {t}" for m, f in known.items()
             for t, n, _ in imports(m, f, known) if n.startswith("_") and not n.startswith("__")]
    assert taken == []


def test_no_training_stage_imports_another():
    stage = {f"jielong.train.{s}" for s in STAGES}
    found = [f"{m} imports {t}" for m, targets in graph(SRC, "jielong").items() if m in stage
             for t in targets if t in stage]
    assert found == []


def test_imports_at_the_top():
    """jielong's own modules are imported at the top of a file; only the CLI's command table
    imports lazily, and a module that needs an optional extra, saying so on the line."""
    known = modules(SRC, "jielong")
    inside = []
    for m, f in known.items():
        text = f.read_text(encoding="utf-8")
        tree = ast.parse(text)
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for t, _, node in imports(m, f, known):
                says_extra = "extra" in text.splitlines()[node.lineno - 1].partition("#")[2]
                if fn.lineno <= node.lineno <= fn.end_lineno and not says_extra \
                        and (m, fn.name) != ("jielong.cli", "_commands"):
                    inside.append(f"{f.relative_to(ROOT)}:{node.lineno} imports {t} inside {fn.name}()")
    assert sorted(set(inside)) == []


def run_as_lines(doc: str) -> list[str]:
    """The commands of a docstring's "Run as:" block (the indented lines after it), comments cut."""
    lines, out = doc.splitlines(), []
    for i, line in enumerate(lines):
        if "Run as:" not in line:
            continue
        rest = line.partition("Run as:")[2].strip()
        block = [rest] if rest else []
        following = lines[i + 1:]
        while following and not following[0].strip() and not block:  # a blank line before the block
            following = following[1:]
        for nxt in following:
            if not nxt.startswith((" ", "\t")) or not nxt.strip():
                break
            block.append(nxt.strip())
        out += [b.split("  #")[0].strip() for b in block if b.split("  #")[0].strip()]
    return out


def command_modules() -> dict[str, list[str]]:
    """Module → the `jielong …` words of each command it defines."""
    owners: dict[str, list[str]] = {}

    def walk(table: dict, words: list[str]) -> None:
        for name, target in table.items():
            if isinstance(target, dict):
                walk(target, words + [name])
            else:
                owners.setdefault(target.__module__, []).append(" ".join(words + [name]))

    walk(cli._commands(), [])
    return owners


def all_docs() -> dict[str, str]:
    out = {}
    for m, f in modules(SRC, "jielong").items():
        doc = ast.get_docstring(ast.parse(f.read_text(encoding="utf-8")))
        assert doc, f"{f.relative_to(ROOT)}: no module docstring"
        out[m] = doc
    return out


def full_words(argv: list[str], words_of: set[str]) -> list[str]:
    """argv with a group's default subcommand written out (`eval MODEL` → `eval run MODEL`)."""
    group = argv[0] if argv else ""
    if group in cli.DEFAULT_SUBCOMMAND and len(argv) > 1 and f"{group} {argv[1]}" not in words_of:
        return [group, cli.DEFAULT_SUBCOMMAND[group], *argv[1:]]
    return argv


def test_every_command_module_says_how_to_run_it():
    docs = all_docs()
    commands = command_modules()
    words_of = {w for ws in commands.values() for w in ws}
    for module, words in commands.items():
        given = set()
        for line in run_as_lines(docs[module]):
            if line.startswith("jielong "):
                argv = full_words(shlex.split(line)[1:], words_of)
                given.add(" ".join(argv[:2]) if " ".join(argv[:2]) in words_of else argv[0])
        for w in words:
            assert w in given, f"{module}: no 'Run as:' line for `jielong {w}`"


def test_every_run_as_line_parses_and_answers_help(capsys):
    docs = all_docs()
    commands = command_modules()
    words_of = {w for ws in commands.values() for w in ws}
    checked = 0
    for module, doc in docs.items():
        for line in run_as_lines(doc):
            if line.startswith("make "):
                target = line.split()[1]
                assert f"\n{target}:" in (ROOT / "Makefile").read_text(), f"{module}: {line}"
                continue
            argv = shlex.split(line)
            if argv[0] == "python" and argv[1] == "-m":
                r = subprocess.run([sys.executable, "-m", argv[2], "--help"], capture_output=True,
                                   text=True, timeout=120)
                assert r.returncode == 0 and "usage" in r.stdout.lower(), f"{module}: {line}\n{r.stderr}"
                checked += 1
                continue
            assert argv[0] == "jielong", f"{module}: 'Run as:' line that is not a command: {line}"
            argv = full_words(argv[1:], words_of)
            n = 2 if " ".join(argv[:2]) in words_of else 1
            assert " ".join(argv[:n]) in words_of, f"{module}: no such command: {line}"
            if "--help" not in argv:
                fn, kwargs = cli.parse(argv)  # argparse exits on an option the command does not take
                assert inspect.signature(fn).bind(**kwargs)
            with pytest.raises(SystemExit) as e:
                cli.parse(argv[:n] + ["--help"])
            assert e.value.code == 0 and "usage: jielong " + " ".join(argv[:n]) in capsys.readouterr().out
            checked += 1
    assert checked >= len(words_of)
