"""The runner in its own thread, between the decode thread and the consumer.

Three stages overlap: :class:`rtseg.live.reader.FrameReader` decodes (its thread), an
:class:`InferenceStage` runs the :class:`~rtseg.pipeline.runner.Runner` (this thread), and the
caller's thread draws, records and shows the results (OpenCV's window must live on the main
thread). Bounded queues sit between them, so the frame rate is the slowest stage's, not the sum
(OpenCV and ONNX Runtime release the GIL while they work). A live source's reader keeps only the
newest frame when inference falls behind and counts the others as dropped; a file's reader
blocks, so nothing is dropped.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Callable

_END = object()


class InferenceStage:
    """Batches of up to ``batch`` frames from ``reader`` through ``runner`` into a queue of
    ``queue_size`` result lists; ``limit``: stop after that many frames; ``on_batch(results,
    seconds)`` is called in this thread after each batch."""

    def __init__(self, reader, runner, batch: int = 1, limit: int | None = None,
                 queue_size: int = 1, on_batch: Callable | None = None) -> None:
        self.reader, self.runner = reader, runner
        self.batch, self.limit = max(1, int(batch)), limit
        self.on_batch = on_batch
        self._q: queue.Queue = queue.Queue(maxsize=max(1, queue_size))
        self._stop = threading.Event()  # start no new batch
        self._closed = threading.Event()  # the consumer is gone: drop what is left
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="rtseg-infer", daemon=True)

    def start(self) -> "InferenceStage":
        self._thread.start()
        return self

    def _run(self) -> None:
        done = 0
        try:
            while not self._stop.is_set():
                want = self.batch if self.limit is None else min(self.batch, self.limit - done)
                if want <= 0:
                    break
                frames = self.reader.get_batch(want)
                if frames is None:
                    break
                t0 = time.perf_counter()
                results = self.runner([f.image for f in frames], [f.index for f in frames],
                                      [f.t for f in frames])
                if self.on_batch is not None:
                    self.on_batch(results, time.perf_counter() - t0)
                if not self._put(results):  # a batch begun is handed over, even after a stop
                    break
                done += len(frames)
        except BaseException as exc:  # surfaced in the consumer's thread
            self._error = exc
        finally:
            self._put(_END, final=True)

    def _put(self, item, final: bool = False) -> bool:
        while True:
            try:
                self._q.put(item, timeout=0.05)
                return True
            except queue.Full:
                if self._closed.is_set():
                    if not final:
                        return False
                    self._drain()

    def get(self):
        """The next batch of results; None at the end. After :meth:`request_stop` the batches
        already begun still come (so a signal finalises every frame segmented), then None."""
        while True:
            try:
                item = self._q.get(timeout=0.05)
            except queue.Empty:
                if not self._thread.is_alive() and self._q.empty():
                    return None
                continue
            if item is _END:
                self._q.put(_END)  # later calls see the end too
                if self._error is not None:
                    err, self._error = self._error, None
                    raise err
                return None
            return item

    def _drain(self) -> None:
        try:
            while True:
                self._q.get_nowait()
        except queue.Empty:
            pass

    def request_stop(self) -> None:
        """Safe from a signal handler: no new batch is started."""
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        self._closed.set()
        self._drain()
        self._thread.join(timeout=10)
