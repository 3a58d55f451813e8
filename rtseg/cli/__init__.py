"""Command-line interface: ``rtseg <command>``.

Each command lives in a small module below and registers itself on :data:`app`. Heavy
libraries (torch, onnxruntime) are imported inside the commands so ``rtseg --help`` is fast.
:func:`main` turns :class:`rtseg.errors.UserError`, a usage error (an unknown option, a value out
of range) and a full disk into one line on stderr and exit code 2.
"""

from __future__ import annotations

import errno
import os
import sys
import warnings

import click

from rtseg.cli.app import app
from rtseg.errors import UserError

# command modules (import order = order in --help)
from rtseg.cli import batching  # noqa: F401,E402  batch (listed first)
from rtseg.cli import propagation  # noqa: F401,E402  features, propagate
from rtseg.cli import training  # noqa: F401,E402  train
from rtseg.cli import inference  # noqa: F401,E402  predict, eval, run
from rtseg.cli import tuning  # noqa: F401,E402  tune
from rtseg.cli import exporting  # noqa: F401,E402  export
from rtseg.cli import streaming  # noqa: F401,E402  stream, bench


def reflow(text: str | None) -> str | None:
    """A help text's paragraphs as single lines, so the terminal wraps them at its own width
    (typer's rich mode keeps every newline: text wrapped at 100 columns in the source came out
    ragged on an 80-column terminal). Paragraphs with indented lines (examples) stay as written."""
    if not text:
        return text
    paras = text.strip("\n").split("\n\n")
    return "\n\n".join(p if any(ln[:1].isspace() for ln in p.splitlines()) else " ".join(p.split("\n"))
                       for p in paras)


for _info in app.registered_commands:
    _info.help = reflow(_info.help or (_info.callback.__doc__ if _info.callback else None))


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr if file is None else file)


FLAG_COMMANDS = ("stream", "predict")  # stop cleanly on a signal (rtseg.shutdown "flag" mode)


def _command(argv: list[str] | None) -> str | None:
    args = sys.argv[1:] if argv is None else argv
    return next((str(a) for a in args if not str(a).startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    from rtseg.shutdown import STOP, Shutdown, interrupt_info

    warnings.showwarning = _one_line_warning
    # OpenCV's own "[ WARN:0@...]" / "[ERROR:...]" lines (a corrupt frame, a missing camera) would
    # add to rtseg's one-line messages; set before cv2 is first imported (OPENCV_LOG_LEVEL wins)
    os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")
    try:
        # SIGINT, SIGTERM and SIGHUP all raise rtseg.shutdown.Interrupted (typer would turn a
        # KeyboardInterrupt into a silent exit 130): atomic writers drop their temporary files.
        # The commands whose loops stop cleanly get a flag-mode Shutdown from the start (they
        # take it over with rtseg.shutdown.loop_shutdown), so an early signal is not lost.
        with Shutdown("flag" if _command(argv) in FLAG_COMMANDS else "raise"):
            # not standalone: a usage error (an unknown option, --batch 0) is one error line
            # here, like every other bad input, not click's boxed panel
            code = app(args=argv, prog_name="rtseg", standalone_mode=False)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        if isinstance(exc, click.UsageError) and not exc.format_message():
            exc.show()  # no arguments at all: the help, exit 2
        else:
            print(f"error: {_usage_line(exc, argv)}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except click.Abort:
        print("error: aborted", file=sys.stderr)
        sys.exit(1)
    except OSError as exc:  # a full disk or a failing device in a write outside rtseg.atomic
        from rtseg.atomic import is_disk_error, write_error

        if not is_disk_error(exc):
            raise
        name = exc.filename or "a file"
        msg = write_error(name, exc) if exc.errno != errno.EIO else f"I/O error on {name}"
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(UserError.exit_code)
    except STOP as exc:
        name, code = interrupt_info(exc)
        print(f"error: interrupted by {name}; finished files are kept, no partial file was left",
              file=sys.stderr)
        sys.exit(code)
    # typer.Exit(n) of a command is returned (not standalone); exit as standalone click did
    sys.exit(code if isinstance(code, int) else 0)


def _usage_line(exc: "click.ClickException", argv: list[str] | None) -> str:
    """click's message in one line, naming the command whose --help explains the options."""
    msg = " ".join(exc.format_message().split())
    ctx = getattr(exc, "ctx", None)
    where = ctx.command_path if ctx is not None else "rtseg"
    return f"{msg} (see: {where} --help)"
