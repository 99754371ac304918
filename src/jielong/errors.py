"""User-facing errors: one line that says what went wrong, where, and how to fix it.

Anything a user can cause (a missing file, a malformed line, an impossible config) raises
`UserError`; `jielong.cli` prints its message on one line and exits with code 2. Bugs stay
ordinary exceptions with a traceback, so they are not mistaken for user mistakes.
"""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """A mistake in the user's input. The message is shown as-is, without a traceback."""


def at(path: str | Path, line: int | None = None) -> str:
    """Format a location as `file:line` (or just `file`) for error messages."""
    return f"{path}:{line}" if line is not None else str(path)


def json_problem(e) -> str:
    """What a `json.JSONDecodeError` found, ending in its column: the standard library's
    messages for some errors end in "at" ("Unterminated string starting at"), so a message
    built as f"{e.msg} at column {e.colno}" read "at at"."""
    msg = e.msg[:-3] if e.msg.endswith(" at") else e.msg
    return f"{msg} at column {e.colno}"
