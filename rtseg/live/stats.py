"""Frame-time bookkeeping for the live loop and the benchmarks, in constant memory.

:class:`RunningStats` keeps count, sum, min and max of a series of durations, plus a
fixed-size reservoir sample (Vitter's algorithm R, seeded) for the median: a run of any length
uses the same memory. :class:`StreamStats` holds one of them per stage (decode, infer, overlay,
write, ...) plus the per-frame loop time, and lays the numbers out like Table 2 of the paper
(Av-time, Mi-time, Ma-time in ms; Av-fps, Mi-fps, Ma-fps).

Conventions: a *frame time* is the wall-clock time the loop spent per output frame (the
interval between two consecutive results; a batch of B frames counts B frames of t/B each).
Mi-fps = 1000 / Ma-time and Ma-fps = 1000 / Mi-time; Av-fps = frames / total time.
"""

from __future__ import annotations

import random
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

TABLE2_FIELDS = ("Av-time", "Mi-time", "Ma-time", "Av-fps", "Mi-fps", "Ma-fps")
RESERVOIR = 2048


class RunningStats:
    """count / total / min / max / median (reservoir) of durations in seconds."""

    __slots__ = ("count", "total", "min", "max", "_res", "_rng", "_size")

    def __init__(self, reservoir: int = RESERVOIR, seed: int = 0) -> None:
        self._size = int(reservoir)
        self._rng = random.Random(seed)
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.total = 0.0
        self.min = float("inf")
        self.max = 0.0
        self._res: list[float] = []

    def add(self, seconds: float, n: int = 1) -> None:
        """Record ``n`` samples of ``seconds`` each (a batch of n frames)."""
        s = float(seconds)
        for _ in range(max(1, int(n))):
            self.count += 1
            self.total += s
            if s < self.min:
                self.min = s
            if s > self.max:
                self.max = s
            if len(self._res) < self._size:
                self._res.append(s)
            else:
                j = self._rng.randrange(self.count)
                if j < self._size:
                    self._res[j] = s

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    @property
    def median(self) -> float:
        if not self._res:
            return 0.0
        r = sorted(self._res)
        k = len(r) // 2
        return r[k] if len(r) % 2 else 0.5 * (r[k - 1] + r[k])

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0-100) of the reservoir (every sample while it is not full)."""
        if not self._res:
            return 0.0
        r = sorted(self._res)
        return r[min(len(r) - 1, max(0, int(round(q / 100.0 * (len(r) - 1)))))]

    def to_dict(self, scale: float = 1000.0) -> dict[str, float | int]:
        """Summary in ms (``scale`` = 1000)."""
        if not self.count:
            return {"count": 0, "avg": 0.0, "min": 0.0, "max": 0.0, "median": 0.0}
        return {"count": self.count, "avg": self.mean * scale, "min": self.min * scale,
                "max": self.max * scale, "median": self.median * scale}


def table2(stats: RunningStats, wall: float | None = None) -> dict[str, float]:
    """Table 2 layout of a frame-time series: times in ms, fps per second.

    ``wall`` (the total seconds for ``stats.count`` frames) gives Av-fps exactly; by default it
    is the sum of the frame times.
    """
    if not stats.count:
        return {k: 0.0 for k in TABLE2_FIELDS} | {"Med-time": 0.0, "Med-fps": 0.0}
    total = stats.total if wall is None else wall
    av = total / stats.count
    return {
        "Av-time": av * 1000.0,
        "Mi-time": stats.min * 1000.0,
        "Ma-time": stats.max * 1000.0,
        "Av-fps": 1.0 / av if av > 0 else 0.0,
        "Mi-fps": 1.0 / stats.max if stats.max > 0 else 0.0,
        "Ma-fps": 1.0 / stats.min if stats.min > 0 else 0.0,
        "Med-time": stats.median * 1000.0,
        "Med-fps": 1.0 / stats.median if stats.median > 0 else 0.0,
    }


class StreamStats:
    """Per-stage timers, the per-frame loop time and a window for periodic logging.

    Thread-safe for one writer per stage (the decode thread writes ``decode``, the loop the
    rest); readers take a consistent snapshot under the lock.
    """

    def __init__(self, stages: tuple[str, ...] = ("decode", "infer", "overlay", "write")) -> None:
        self._lock = threading.Lock()
        self.stages: dict[str, RunningStats] = {s: RunningStats(seed=i + 1) for i, s in enumerate(stages)}
        self.frame = RunningStats(seed=0)
        self.latency = RunningStats(seed=len(stages) + 100)  # capture -> overlay ready, per frame
        self.frames = 0
        self.wall = 0.0  # seconds of loop time counted (pauses excluded)
        self._win_n = 0
        self._win_t = 0.0
        self._win_min = float("inf")
        self._win_max = 0.0

    # --- recording ---------------------------------------------------------------------
    def add_stage(self, name: str, seconds: float, n: int = 1) -> None:
        """``seconds`` spent in stage ``name`` for ``n`` frames (stored per frame)."""
        with self._lock:
            st = self.stages.get(name)
            if st is None:
                st = self.stages[name] = RunningStats(seed=len(self.stages) + 1)
            st.add(seconds / max(1, n), n)

    @contextmanager
    def time(self, name: str, n: int = 1) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add_stage(name, time.perf_counter() - t0, n)

    def add_latency(self, seconds: float) -> None:
        with self._lock:
            self.latency.add(seconds)

    def latency_ms(self) -> dict[str, float | int]:
        """Per-frame latency from capture to overlay ready: count, median, p95, p99, max [ms]."""
        with self._lock:
            lat = self.latency
            return {"count": lat.count, "median": lat.median * 1000.0,
                    "p95": lat.percentile(95) * 1000.0, "p99": lat.percentile(99) * 1000.0,
                    "max": lat.max * 1000.0}

    def add_frames(self, seconds: float, n: int = 1) -> None:
        """``n`` frames done in ``seconds`` of loop time."""
        per = seconds / max(1, n)
        with self._lock:
            self.frame.add(per, n)
            self.frames += n
            self.wall += seconds
            self._win_n += n
            self._win_t += seconds
            self._win_min = min(self._win_min, per)
            self._win_max = max(self._win_max, per)

    # --- reading -----------------------------------------------------------------------
    def window(self) -> dict[str, float]:
        """fps over the frames since the last call (then reset the window)."""
        with self._lock:
            n, t, lo, hi = self._win_n, self._win_t, self._win_min, self._win_max
            self._win_n, self._win_t, self._win_min, self._win_max = 0, 0.0, float("inf"), 0.0
        if not n:
            return {"frames": 0, "fps": 0.0, "min_fps": 0.0, "max_fps": 0.0}
        return {"frames": n, "fps": n / t if t > 0 else 0.0,
                "min_fps": 1.0 / hi if hi > 0 else 0.0, "max_fps": 1.0 / lo if lo > 0 else 0.0}

    def table2(self) -> dict[str, float]:
        with self._lock:
            return table2(self.frame, self.wall)

    def stage_summary(self) -> dict[str, dict[str, float | int]]:
        with self._lock:
            return {k: v.to_dict() for k, v in self.stages.items() if v.count}

    def to_dict(self) -> dict[str, Any]:
        return {"table2": self.table2(), "frames_timed": self.frames, "loop_seconds": self.wall,
                "stages_ms": self.stage_summary(), "latency_ms": self.latency_ms()}
