"""Helpers shared by the test modules (import as ``from helpers import run_cli``)."""

from __future__ import annotations

import warnings


def run_cli(argv, capsys):
    """Run ``rtseg ARGV`` in-process the way ``python -m rtseg`` does: (exit code, stdout, stderr)."""
    from rtseg.cli import main

    saved = warnings.showwarning
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        warnings.showwarning = saved
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def count_frames(path) -> int:
    """Frames OpenCV decodes from a video file (the file must open)."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), f"cannot reopen {path}"
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n
