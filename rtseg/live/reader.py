"""The background reader of the live loop: :class:`FrameReader` decodes a frame source
(:mod:`rtseg.live.capture`) in a daemon thread into a small bounded queue: for live sources the
*oldest* queued frame is dropped when the queue is full (the loop always gets the most recent
picture), for files and folders the reader blocks (nothing is dropped)."""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass

import numpy as np

from rtseg.live.capture import FrameSource


@dataclass
class Frame:
    index: int  # position in the source (0-based, counting every frame read)
    image: np.ndarray  # BGR uint8 [H, W, 3]
    t: float | None = None  # time.perf_counter() when it was decoded (latency is counted from it)


@dataclass
class ReaderCounts:
    read: int = 0  # frames decoded
    dropped: int = 0  # decoded but discarded (live sources, queue full)
    unreadable: int = 0  # corrupt/undecodable frames skipped (incl. a truncated file's tail)
    reconnects: int = 0
    lost: bool = False  # a live source stopped and could not be reopened
    loops: int = 0


_END = object()


class FrameReader:
    """Decode ``source`` in a daemon thread into a bounded queue.

    ``limit``: stop after this many frames have been read (non-live sources only: for a live
    source the loop decides, since frames are dropped). ``loop``: start a file/folder/demo
    again at its end. ``on_decode(seconds)`` is called with each frame's decode time.
    """

    def __init__(self, source: FrameSource, queue_size: int = 4, limit: int | None = None,
                 loop: bool = False, retries: int = 3, retry_delay: float = 0.5,
                 on_decode=None) -> None:
        self.source = source
        self.live = source.info.live
        self.counts = ReaderCounts()
        self._q: queue.Queue = queue.Queue(maxsize=max(1, queue_size))
        self._limit = None if self.live else limit
        self._loop = loop and not self.live
        self._retries = retries
        self._retry_delay = retry_delay
        self._on_decode = on_decode
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self._pending: Frame | None = None
        self._ended = False
        self._thread = threading.Thread(target=self._run, name="rtseg-decode", daemon=True)

    # --- producer ------------------------------------------------------------------------
    def start(self) -> "FrameReader":
        self._thread.start()
        return self

    def _put(self, item) -> bool:
        """Queue ``item``; live: drop the oldest when full; else block. False if stopped."""
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1 if not self.live else 0)
                return True
            except queue.Full:
                if self.live:
                    try:
                        self._q.get_nowait()
                        with self._lock:
                            self.counts.dropped += 1
                    except queue.Empty:
                        pass
        return False

    def _put_end(self) -> None:
        # the end marker is never dropped: make room for it if need be
        while True:
            try:
                self._q.put(_END, timeout=0.1)
                return
            except queue.Full:
                if self._stop.is_set() or self.live:
                    try:
                        self._q.get_nowait()
                        if self.live:
                            with self._lock:
                                self.counts.dropped += 1
                    except queue.Empty:
                        pass

    def _run(self) -> None:
        src, c = self.source, self.counts
        index = 0
        got_this_pass = 0
        try:
            while not self._stop.is_set():
                if self._limit is not None and c.read >= self._limit:
                    break
                t0 = time.perf_counter()
                r = src.read()
                dt = time.perf_counter() - t0
                if r.status == "ok":
                    if self._on_decode is not None:
                        self._on_decode(dt)
                    with self._lock:
                        c.read += 1
                    got_this_pass += 1
                    if not self._put(Frame(index, r.frame, time.perf_counter())):
                        break
                    index += 1
                elif r.status == "bad":
                    with self._lock:
                        c.unreadable += 1
                    index += 1
                else:  # end of the source
                    if self.live and not self._stop.is_set():
                        if self._reconnect():
                            continue
                        with self._lock:
                            c.lost = True
                        break
                    if self._loop and got_this_pass and src.rewind():
                        with self._lock:
                            c.unreadable += src.missing
                            c.loops += 1
                        src.missing = 0
                        got_this_pass = 0
                        continue
                    break
        except BaseException as exc:  # surfaced in the loop's thread
            self._error = exc
        finally:
            with self._lock:
                c.unreadable += src.missing
            src.missing = 0
            self._put_end()

    def _reconnect(self) -> bool:
        for k in range(self._retries):
            if self._stop.wait(self._retry_delay * (2 ** k)):
                return False
            if self.source.reopen():
                with self._lock:
                    self.counts.reconnects += 1
                return True
        return False

    # --- consumer ------------------------------------------------------------------------
    def _get(self, block: bool):
        while True:
            try:
                return self._q.get(timeout=0.1) if block else self._q.get_nowait()
            except queue.Empty:
                if not block:
                    return None
                if not self._thread.is_alive() and self._q.empty():
                    return _END

    def get_batch(self, size: int = 1) -> list[Frame] | None:
        """Up to ``size`` frames of one shape; None at the end of the source.

        Blocks for the first frame; the rest: files wait for them, live sources take only
        what is already queued (so a batch never waits on a camera).
        """
        if self._ended and self._pending is None:
            self._raise_error()
            return None
        out: list[Frame] = []
        if self._pending is not None:
            out.append(self._pending)
            self._pending = None
        while len(out) < size and not self._ended:
            item = self._get(block=not out or not self.live)
            if item is None:
                break
            if item is _END:
                self._ended = True
                break
            if out and item.image.shape != out[0].image.shape:
                self._pending = item  # a new frame size starts the next batch
                break
            out.append(item)
        if not out:
            self._raise_error()
            return None
        return out

    def _raise_error(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def snapshot(self) -> ReaderCounts:
        with self._lock:
            return ReaderCounts(**vars(self.counts))

    def request_stop(self) -> None:
        """Ask the decoder to stop (safe from a signal handler): the loop's next read ends."""
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        # unblock a producer waiting on a full queue
        try:
            while True:
                self._q.get_nowait()
        except queue.Empty:
            pass
        self._thread.join(timeout=5)
        self.source.close()

    def __enter__(self) -> "FrameReader":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
