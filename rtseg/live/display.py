"""Where the live loop's frames go: the OpenCV window (after a check that one can open here) and
the video file, plus the checks of the ``--json`` / ``--save`` paths before any work."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from rtseg.atomic import LOW_SPACE, ensure_parent, failed_write, free_bytes
from rtseg.errors import UserError

WINDOW = "rtseg stream"


def gui_problem() -> str | None:
    """Why OpenCV cannot open a window here, or None if it can."""
    gui = ""
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GUI:"):
            gui = line.split(":", 1)[1].strip()
            break
    if gui.upper() == "NONE":
        return "this OpenCV build has no GUI support (opencv-python-headless?)"
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY")
                                                 or os.environ.get("WAYLAND_DISPLAY")
                                                 or os.environ.get("QT_QPA_PLATFORM")):
        return "no display to open a window on (DISPLAY is not set)"
    # Qt aborts the whole process when it cannot connect: probe in a child process
    probe = "import cv2; cv2.namedWindow('rtseg-probe'); cv2.waitKey(1); cv2.destroyAllWindows()"
    try:
        r = subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=20,
                           text=True)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot probe the OpenCV GUI: {exc}"
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["it failed"])[-1][:160]
        return f"OpenCV cannot open a window: {last}"
    return None


class Window:
    """q or Esc quits, space pauses; closing the window quits."""

    def __init__(self) -> None:
        try:
            cv2.namedWindow(WINDOW, cv2.WINDOW_NORMAL)
        except cv2.error as exc:
            raise UserError(f"OpenCV cannot open a window ({str(exc).strip().splitlines()[-1]}); "
                            "use --headless") from None
        self.opened = False

    def show(self, img: np.ndarray) -> str | None:
        """Show a frame; returns "quit", "pause" or None."""
        try:
            cv2.imshow(WINDOW, img)
            key = cv2.waitKey(1) & 0xFF
        except cv2.error as exc:
            raise UserError(f"OpenCV cannot show a window ({str(exc).strip().splitlines()[-1]}); "
                            "use --headless") from None
        if self.opened and cv2.getWindowProperty(WINDOW, cv2.WND_PROP_VISIBLE) < 1:
            return "quit"
        self.opened = True
        if key in (ord("q"), ord("Q"), 27):
            return "quit"
        if key == ord(" "):
            return "pause"
        return None

    def wait_unpause(self, stop=lambda: False) -> bool:
        """Block while paused; False if the user quit (or ``stop()`` became true) meanwhile."""
        while True:
            if stop():
                return False
            key = cv2.waitKey(50) & 0xFF
            if key in (ord("q"), ord("Q"), 27):
                return False
            if key == ord(" "):
                return True
            if cv2.getWindowProperty(WINDOW, cv2.WND_PROP_VISIBLE) < 1:
                return False

    def close(self) -> None:
        with contextlib.suppress(cv2.error):
            cv2.destroyWindow(WINDOW)
            cv2.waitKey(1)


MAX_VIDEO_SIDE = 8191  # mp4v (MPEG-4 part 2, as ffmpeg codes it): at most 8191 pixels a side
SPACE_CHECK_EVERY = 25  # frames between free-space checks while writing


class VideoSink:
    """cv2.VideoWriter (mp4v) opened at the first frame; later frames resized to its size.

    OpenCV never reports a failed frame write: a full disk would leave a file that decodes to
    nothing under the final name. So the free space is checked every few frames and the file
    is checked once released (:meth:`finish`): a problem raises ``UserError`` and the atomic
    writer keeps the earlier file.
    """

    def __init__(self, path: Path, fps: float, shown_as: str) -> None:
        self.path = path
        self.fps = fps
        self.shown_as = shown_as
        self.size: tuple[int, int] | None = None  # (W, H)
        self.frames = 0
        self._vw = None

    def write(self, img: np.ndarray) -> None:
        h, w = img.shape[:2]
        if self._vw is None:
            self._open(w, h)
        if (w, h) != self.size:
            img = cv2.resize(img, self.size, interpolation=cv2.INTER_AREA)
        if self.frames % SPACE_CHECK_EVERY == 0:
            self._check_space()
        self._vw.write(img)
        self.frames += 1

    def _check_space(self) -> None:
        """Free space for the next frames (twice the size of the last checks' frames, at least
        LOW_SPACE): else stop now with the disk's line, before OpenCV fails silently."""
        free = free_bytes(Path(self.path).parent)
        if free is None:
            return
        try:
            per_frame = os.path.getsize(self.path) / self.frames if self.frames else 0.0
        except OSError:
            per_frame = 0.0
        if free < max(LOW_SPACE, 2 * SPACE_CHECK_EVERY * per_frame):
            raise UserError(f"no space left on device writing {self.shown_as}")

    def _open(self, w: int, h: int) -> None:
        if max(w, h) > MAX_VIDEO_SIDE:
            raise UserError(f"frames of {w}x{h} are too large for a video file (mp4v codes at "
                            f"most {MAX_VIDEO_SIDE} pixels a side): {self.shown_as}")
        self.size = (w, h)
        self._vw = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"),
                                   self.fps, self.size)
        if not self._vw.isOpened():
            self._vw = None
            raise failed_write(self.shown_as, self.path,
                               f"OpenCV cannot write {w}x{h} frames to video {self.shown_as} "
                               "(use a .mp4 or .avi name)")

    def release(self) -> None:
        if self._vw is not None:
            self._vw.release()
            self._vw = None

    def finish(self) -> None:
        """Release, then check the file decodes: UserError (the disk's line when it is full)."""
        self.release()
        if self.frames and not video_decodes(self.path):
            raise failed_write(self.shown_as, self.path,
                               f"OpenCV wrote a video that does not decode: {self.shown_as}")


def video_decodes(path: str | Path) -> bool:
    """True when OpenCV opens ``path`` and reads its first frame."""
    cap = cv2.VideoCapture(str(path))
    try:
        return bool(cap.isOpened() and cap.read()[0])
    finally:
        cap.release()


def check_json_path(path: str) -> Path:
    """--json must name a file whose folder can be written: checked before any work."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"--json must be a file name, not a folder: {p}")
    ensure_parent(p)
    return p


def check_save_path(path: str) -> Path:
    p = Path(path)
    if p.is_dir():
        raise UserError(f"--save must be a video file name, not a folder: {p}")
    if p.suffix.lower() not in (".mp4", ".avi", ".mov", ".mkv", ".m4v"):
        raise UserError(f"--save must end in .mp4 (or .avi, .mov, .mkv): {p}")
    ensure_parent(p)
    return p
