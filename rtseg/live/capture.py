"""Frame sources for the live loop, decoded in a background thread.

A source is one of (see :func:`open_source`):

- ``None``: the built-in synthetic demo clip (:func:`rtseg.synthetic.clip_frames`), labelled
  "SYNTHETIC DEMO" on screen;
- a camera index (``"0"``) or a stream URL (``rtsp://``, ``http://``, ...): *live* sources;
- a video file (anything OpenCV/FFmpeg decodes);
- a folder of frames (natural sort order, :func:`rtseg.imageio.natural_key`), or one image.

Frames are BGR uint8 ``[H, W, 3]``. :class:`rtseg.live.reader.FrameReader` decodes in a daemon thread into a
small bounded queue: for live sources the *oldest* queued frame is dropped when the queue is
full (the loop always gets the most recent picture), for files and folders the reader blocks
(nothing is dropped). Corrupt frames are counted and skipped; the end of a file ends the
stream; a live source that stops delivering is reopened a few times, then the stream ends.

Decisions on damaged input: a video file that OpenCV cannot open at all (missing index, e.g. an
mp4 cut before its ``moov`` atom) is a :class:`~rtseg.errors.UserError`; a file that opens but
stops early (e.g. a truncated AVI) ends cleanly, and the frames its header promised but that
could not be decoded are counted as unreadable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from rtseg.errors import UserError
from rtseg.imageio import IMAGE_EXTENSIONS, list_images

# FFmpeg's own messages ("moov atom not found", ...) would add lines to our one-line errors
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

URL_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
DEMO_FRAMES = 250  # 10 s at 25 fps
DEMO_SIZE = (288, 384)  # (H, W): CVC-ClinicDB frame size
DEFAULT_FPS = 25.0
MAX_BAD_IN_A_ROW = 5  # consecutive failed reads of a file before it counts as ended


# --- what a source is --------------------------------------------------------------------
@dataclass
class SourceInfo:
    spec: str  # what the user gave ("" for the demo)
    kind: str  # demo | camera | url | video | folder | image
    live: bool
    fps: float = DEFAULT_FPS
    size: tuple[int, int] | None = None  # (H, W) of the first frame, when known
    frame_count: int | None = None  # declared by the container / number of files
    label: str | None = None  # on-screen label (the demo)

    def describe(self) -> str:
        return "synthetic demo clip" if self.kind == "demo" else f"{self.kind} {self.spec}"


@dataclass
class ReadResult:
    status: str  # "ok" | "bad" | "end"
    frame: np.ndarray | None = None


class FrameSource:
    """A synchronous frame producer; :class:`FrameReader` runs it in a thread."""

    info: SourceInfo

    def read(self) -> ReadResult:
        raise NotImplementedError

    def reopen(self) -> bool:
        """Live sources: try to reconnect after a failure; True on success."""
        return False

    def rewind(self) -> bool:
        """Files: start again from the first frame (for looping); True on success."""
        return False

    def close(self) -> None:
        pass

    # counts that only the source knows (frames a truncated file promised but never gave)
    missing: int = 0


def _quiet_capture(target, api: int = cv2.CAP_ANY) -> cv2.VideoCapture:
    """Open a VideoCapture without OpenCV's own WARN lines on stderr."""
    log = getattr(cv2, "utils", None) and getattr(cv2.utils, "logging", None)
    old = None
    if log is not None:
        try:
            old = log.getLogLevel()
            log.setLogLevel(log.LOG_LEVEL_SILENT)
        except Exception:  # pragma: no cover - very old OpenCV
            old = None
    try:
        return cv2.VideoCapture(target, api)
    finally:
        if old is not None:
            log.setLogLevel(old)


class VideoSource(FrameSource):
    """A video file, a camera index or a stream URL via cv2.VideoCapture."""

    def __init__(self, info: SourceInfo, target) -> None:
        self.info = info
        self._target = target
        self._cap = None
        self._bad_run = 0
        self._pos = 0  # frames read or skipped since the last (re)start
        self.missing = 0
        self._open(first=True)

    def _open(self, first: bool = False) -> bool:
        if self._cap is not None:
            self._cap.release()
        self._cap = _quiet_capture(self._target)
        if not self._cap.isOpened():
            self._cap.release()
            self._cap = None
            if first:
                what = {"camera": f"camera {self._target}", "url": f"stream {self._target}"}.get(
                    self.info.kind, f"video file {self._target}")
                hint = " (truncated, corrupt or not a video?)" if self.info.kind == "video" else ""
                raise UserError(f"cannot open {what}{hint}")
            return False
        cap = self._cap
        fps = cap.get(cv2.CAP_PROP_FPS)
        if fps and np.isfinite(fps) and 1.0 <= fps <= 1000.0:
            self.info.fps = float(fps)
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if w > 0 and h > 0:
            self.info.size = (h, w)
        n = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        if not self.info.live and n and np.isfinite(n) and n > 0:
            self.info.frame_count = int(n)
        self._bad_run = 0
        self._pos = 0
        return True

    def read(self) -> ReadResult:
        if self._cap is None:
            return ReadResult("end")
        ok, frame = self._cap.read()
        if ok and frame is not None and frame.ndim == 3 and frame.shape[2] == 3 and frame.size:
            self._bad_run = 0
            self._pos += 1
            return ReadResult("ok", frame)
        if ok and frame is not None and frame.ndim == 2:  # grey camera
            self._bad_run = 0
            self._pos += 1
            return ReadResult("ok", cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
        if self.info.live:
            return ReadResult("end")  # the reader decides whether to reconnect
        # a file: a failed read before the declared end is a corrupt frame, up to a point
        declared = self.info.frame_count or 0
        self._bad_run += 1
        if self._pos < declared - 1 and self._bad_run <= MAX_BAD_IN_A_ROW:
            self._pos += 1
            return ReadResult("bad")
        # ended: frames the header promised beyond what we got are unreadable (truncated file)
        self.missing += max(0, declared - self._pos) if declared - self._pos > 1 else 0
        self._pos = declared
        return ReadResult("end")

    def reopen(self) -> bool:
        return self._open()

    def rewind(self) -> bool:
        return self._open()

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def _read_bgr(path: Path) -> np.ndarray | None:
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError:
        return None
    if data.size == 0:
        return None
    img = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if img is None or img.ndim != 3 or not img.size:
        return None
    return img


class FilesSource(FrameSource):
    """A folder of frames (natural order) or a single image."""

    def __init__(self, info: SourceInfo, files: list[Path]) -> None:
        self.info = info
        self._files = files
        self._i = 0
        self.missing = 0
        info.frame_count = len(files)

    def read(self) -> ReadResult:
        if self._i >= len(self._files):
            return ReadResult("end")
        p = self._files[self._i]
        self._i += 1
        img = _read_bgr(p)
        return ReadResult("bad") if img is None else ReadResult("ok", img)

    def rewind(self) -> bool:
        self._i = 0
        return True


class DemoSource(FrameSource):
    """The synthetic demo clip, generated on the fly (no frames kept in memory)."""

    def __init__(self, info: SourceInfo, n: int = DEMO_FRAMES) -> None:
        self.info = info
        self._n = n
        self.missing = 0
        self._it = self._gen()

    def _gen(self) -> Iterator[np.ndarray]:
        from rtseg.synthetic import clip_frames

        return iter(clip_frames(self._n, DEMO_SIZE, seed=0))

    def read(self) -> ReadResult:
        f = next(self._it, None)
        return ReadResult("end") if f is None else ReadResult("ok", f)

    def rewind(self) -> bool:
        self._it = self._gen()
        return True


def file_url_path(spec: str) -> str:
    """``file:///data/clip.mp4`` (or ``file://localhost/...``) -> ``/data/clip.mp4``; else ``spec``."""
    s = str(spec).strip()
    if s.lower().startswith("file://"):
        from urllib.parse import unquote, urlsplit

        u = urlsplit(s)
        if u.netloc not in ("", "localhost"):
            raise UserError(f"file URL on another host is not supported: {s}")
        return unquote(u.path)
    return s


def classify_source(spec: str | None) -> str:
    """demo | camera | url | folder | image | video (without opening anything)."""
    if spec is None or str(spec).strip() == "":
        return "demo"
    s = file_url_path(spec)
    if s.isdigit():
        return "camera"
    if s.lower().startswith(URL_SCHEMES):
        return "url"
    p = Path(s)
    if p.is_dir():
        return "folder"
    if p.suffix.lower() in IMAGE_EXTENSIONS:
        return "image"
    return "video"


def open_source(spec: str | None) -> FrameSource:
    """Open ``spec`` (see the module doc); raises UserError for a missing/unusable source."""
    kind = classify_source(spec)
    if kind == "demo":
        return DemoSource(SourceInfo("", "demo", False, DEFAULT_FPS, DEMO_SIZE, DEMO_FRAMES,
                                     "SYNTHETIC DEMO"))
    s = file_url_path(spec)
    if kind == "camera":
        return VideoSource(SourceInfo(s, "camera", True), int(s))
    if kind == "url":
        return VideoSource(SourceInfo(s, "url", True), s)
    p = Path(s)
    if kind == "folder":
        files = list_images(p, "frame folder")
        first = next((im for im in map(_read_bgr, files[:20]) if im is not None), None)
        if first is None:
            raise UserError(f"no readable image among the first frames of {p}")
        return FilesSource(SourceInfo(s, "folder", False, DEFAULT_FPS, first.shape[:2]), files)
    if not p.exists():
        raise UserError(f"source not found: {p}")
    if not p.is_file():
        raise UserError(f"source is not a file, folder, camera index or URL: {p}")
    if kind == "image":
        img = _read_bgr(p)
        if img is None:
            raise UserError(f"not a readable image: {p}")
        return FilesSource(SourceInfo(s, "image", False, DEFAULT_FPS, img.shape[:2]), [p])
    return VideoSource(SourceInfo(s, "video", False), s)


__all__ = ["SourceInfo", "FrameSource", "VideoSource", "FilesSource", "DemoSource",
           "open_source", "classify_source", "DEFAULT_FPS"]
