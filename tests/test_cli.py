"""The CLI maps functions to commands: positionals, flags, nested settings, YAML recipes."""

from dataclasses import dataclass
from pathlib import Path

import pytest

from jielong.cli import run
from jielong.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Knobs:
    """Args:
    steps: how many
    lr: how fast
    """

    steps: int = 10
    lr: float = 1e-3


def cmd(data: list[str], out: str = "x", resume: bool = False, stop: list[str] | None = None,
        knobs: Knobs | None = None) -> dict:
    """A command.

    Args:
        data: inputs
        out: where
    """
    return {"data": data, "out": out, "resume": resume, "stop": stop, "knobs": knobs}


def test_positionals_flags_and_nested_settings():
    r = run(["cmd", "a.jsonl", "b.txt", "--resume", "--steps", "5", "--stop", "\n", "。"], {"cmd": cmd})
    assert r["data"] == ["a.jsonl", "b.txt"] and r["resume"] is True and r["stop"] == ["\n", "。"]
    assert r["knobs"] == Knobs(steps=5, lr=1e-3)
    assert run(["cmd", "a", "--no-resume"], {"cmd": cmd})["resume"] is False
    assert run(["cmd", "a", "--stop", "x", "--stop", "y", "z"], {"cmd": cmd})["stop"] == ["x", "y", "z"]


def test_recipe_fills_options_and_the_command_line_wins(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("out: from-recipe\nknobs:\n  steps: 7\n  lr: 0.5\n")
    r = run(["cmd", "a", "--config", str(recipe), "--lr", "0.25"], {"cmd": cmd})
    assert r["out"] == "from-recipe" and r["knobs"] == Knobs(steps=7, lr=0.25)


def tuned(out: str = "x", knobs: Knobs = Knobs(steps=3, lr=2e-5)) -> Knobs:  # noqa: B008
    """A command with its own defaults for a settings dataclass."""
    return knobs


def test_a_commands_default_instance_sets_its_option_defaults():
    assert run(["tuned"], {"tuned": tuned}) == Knobs(steps=3, lr=2e-5)
    assert run(["tuned", "--lr", "0.1"], {"tuned": tuned}) == Knobs(steps=3, lr=0.1)
    assert run(["cmd", "a"], {"cmd": cmd})["knobs"] == Knobs()  # no instance: the dataclass's


@pytest.mark.parametrize("name", ["demo.yaml", "124m.yaml"])
def test_shipped_recipes_are_valid_for_pretrain(name, monkeypatch):
    import jielong.train.pretrain as pretrain

    # Options are parsed and checked (unknown keys, presets, seq_len) before any slow work.
    monkeypatch.setattr(pretrain, "prepare_tokenizer", lambda *a, **k: (_ for _ in ()).throw(
        UserError("stop here")))
    with pytest.raises(UserError, match="stop here"):
        run(["pretrain", "x.jsonl", "--config", str(ROOT / "recipes" / name)])
