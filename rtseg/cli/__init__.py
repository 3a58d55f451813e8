"""Command-line interface: ``rtseg <command>``.

Each command lives in a small module below and registers itself on :data:`app`. Heavy
libraries (torch, onnxruntime) are imported inside the commands so ``rtseg --help`` is fast.
:func:`main` turns :class:`rtseg.errors.UserError` into one line on stderr and exit code 2.
"""

from __future__ import annotations

import os
import sys
import warnings

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
            # standalone mode: typer/click handle usage errors (exit 2) and --help themselves
            app(args=argv, prog_name="rtseg")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except STOP as exc:
        name, code = interrupt_info(exc)
        print(f"error: interrupted by {name}; finished files are kept, no partial file was left",
              file=sys.stderr)
        sys.exit(code)
    return 0
