"""Terminal output shared by the commands: the console for tables and the rich progress bars.

Every bar has the same layout: description, bar, done/total, any extra text columns, elapsed time
and (``eta``) the time remaining. rich is imported inside the functions (fast ``--help``).
"""

from __future__ import annotations

import os
import sys


def make_console():
    """A rich console; when output goes to a file or pipe, wide enough for the tables."""
    from rich.console import Console

    wide = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    return Console(highlight=False, width=160 if wide else None)


def progress_bar(description: str = "{task.description}", *extra: str, eta: bool = True, **kw):
    """A ``rich.progress.Progress`` with the shared layout; ``extra`` are text columns (rich
    format strings, e.g. ``"{task.fields[info]}"``) between the count and the times; ``kw``
    go to Progress (console, transient, disable)."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    columns = [TextColumn(description), BarColumn(), MofNCompleteColumn(),
               *(TextColumn(c) for c in extra), TimeElapsedColumn()]
    if eta:
        columns.append(TimeRemainingColumn())
    return Progress(*columns, **kw)


def started_bar(what: str, total: int, completed: int = 0):
    """(progress, task): a started one-task bar labelled ``what`` (stop it with ``.stop()``)."""
    prog = progress_bar(what, transient=False)
    task = prog.add_task(what, total=total, completed=completed)
    prog.start()
    return prog, task
