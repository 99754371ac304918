"""Every `jielong …` line in the README's shell blocks is a command line the CLI takes: the
command exists and its options parse and bind to the function (the commands themselves run
in the tests of each stage, on tiny models)."""

import inspect
import re
import shlex
from pathlib import Path

from jielong import cli

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> list[str]:
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            words = shlex.split(line, comments=True) if line else []
            while words and re.match(r"^[A-Z_]+=", words[0]):  # VAR=value before the command
                words = words[1:]
            if words and words[0] == "jielong":
                lines.append(words[1:])
    return lines


def test_every_readme_command_parses():
    commands = readme_commands()
    assert len(commands) >= 30
    for argv in commands:
        fn, kwargs = cli.parse(argv)  # argparse exits (status 2) on anything the command does not take
        assert inspect.signature(fn).bind(**kwargs), argv
