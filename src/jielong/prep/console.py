"""What a `jielong data clean` run shows on the terminal: progress bars and warnings, not
datatrove's log lines (`--verbose` shows those).

    quiet_console()                               # this process: warnings only, no tracebacks
    QuietLocalExecutor(pipeline, tasks=4, ...)    # its tasks: datatrove's logging switched off

datatrove's executor sets up a chatty console logger for every task, in the worker process
that runs it, and puts its default one back after. `QuietLocalExecutor` switches datatrove's
log records off for the task (loguru's `logger.disable`, which works per process) and leaves
the quiet console behind; the stats datatrove keeps for each task (logs/stats/) do not
depend on logging and are written as ever.
"""

from __future__ import annotations

import sys

from datatrove.executor.local import LocalPipelineExecutor
from loguru import logger

from jielong.errors import UserError


def _not_user_error(record) -> bool:
    """A UserError is shown once, on one line, by the CLI: not as a logged traceback."""
    exc = record["exception"]
    return not (exc and isinstance(exc.value, UserError))


def quiet_console() -> None:
    """Only warnings on the terminal, where the progress bars are."""
    logger.remove()
    logger.add(sys.stderr, level="WARNING", format="{level}: {message}", filter=_not_user_error)


class QuietLocalExecutor(LocalPipelineExecutor):
    """datatrove's local executor without datatrove's log lines on the console."""

    def _run_for_rank(self, rank: int, local_rank: int = 0, node_rank: int = -1):
        logger.disable("datatrove")
        try:
            return super()._run_for_rank(rank, local_rank, node_rank)
        finally:
            quiet_console()  # datatrove's task logger ends by putting its default console back
            logger.enable("datatrove")
