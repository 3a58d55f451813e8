"""``rtseg stream``: the live loop (capture -> segmenter -> overlay -> window / video file).

Three stages overlap (:mod:`rtseg.pipeline.stages`): a thread decodes the source into a bounded
queue (:class:`rtseg.live.reader.FrameReader`: a live source keeps only its newest frame when the
rest falls behind, the others counted as dropped; a file blocks, nothing dropped); a thread runs
the one frame pipeline (:class:`rtseg.pipeline.runner.Runner`: the segmenter on the frame's
active area resized once on the CPU, the call's and the map's filters, the mask at frame size);
this thread draws the overlay, writes the video and shows the window (OpenCV's GUI must run on
the main thread). The frame rate is the slowest stage's. Each frame's latency is counted from
its decode to its overlay being ready.

Statistics (:class:`rtseg.live.stats.StreamStats`) are running aggregates and fixed-size
reservoirs, so memory stays flat however long the run. Warm-up happens before the clock starts.
"""

from __future__ import annotations

import contextlib
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

from rtseg.atomic import atomic_path, write_json
from rtseg.live.capture import FrameSource, open_source
from rtseg.live.reader import FrameReader
from rtseg.errors import UserError
from rtseg.live.display import VideoSink, Window, check_json_path, check_save_path, gui_problem
from rtseg.live.report import print_report
from rtseg.live.stats import StreamStats
from rtseg.live.overlay import Overlay
from rtseg.model.manifest import resolve_call_smoothing
from rtseg.pipeline.options import FrameOptions
from rtseg.pipeline.runner import Runner
from rtseg.pipeline.stages import InferenceStage
from rtseg.runtime.loader import load_segmenter
from rtseg.ui import make_console
from rtseg.shutdown import STOP, Interrupted, Shutdown


@dataclass
class StreamConfig(FrameOptions):
    source: str | None = None
    model: str | None = None
    backend: str = "auto"
    device: str = "auto"
    fp16: bool | None = None  # None: the backend's default
    threads: int = 0  # CPU threads for the segmenter (torch intra-op / onnxruntime); 0 = default
    headless: bool = False
    save: str | None = None
    max_frames: int | None = None
    json: str | None = None
    loop: bool = False
    queue_size: int = 2  # decoded frames waiting (files; a live source keeps only the newest)
    reconnect_retries: int = 3  # live sources: reopen attempts after a failure
    reconnect_delay: float = 0.5  # seconds before the first attempt (doubling)
    log_every: float = 5.0  # seconds between progress lines; 0 = none
    quiet: bool = False  # no progress lines, no final tables (benchmarks)
    extra: dict[str, Any] = field(default_factory=dict)  # copied into the stats JSON

    def check(self) -> None:
        super().check()  # batch, smooth, call smoothing, alpha
        if self.max_frames is not None and self.max_frames < 1:
            raise UserError(f"--max-frames must be at least 1, got {self.max_frames}")
        if not self.log_every >= 0:  # also rejects NaN
            raise UserError(f"--log-every must be 0 (no progress lines) or more seconds, "
                            f"got {self.log_every}")
        if self.source is not None and not str(self.source).strip():
            raise UserError("--source is empty (an unset variable?); leave it out for the "
                            "synthetic demo clip")


# --- the loop ----------------------------------------------------------------------------
@dataclass
class StreamResult:
    stats: dict[str, Any]
    interrupted: bool = False
    signal: str | None = None  # "SIGINT", "SIGTERM", "SIGHUP" when interrupted
    exit_code: int = 0  # what the CLI exits with: 0, or 128 + the signal number


def _abort_loading(signum: int) -> None:
    raise Interrupted(signum)


class _NotLoaded:
    """Stands in for the segmenter when a signal came before it was loaded (never called)."""

    name = backend = "not loaded"
    device = None
    manifest = SimpleNamespace(input_size=None, threshold=None, postprocess=())

    def describe(self) -> str:
        return "no model (interrupted while loading)"

    def warmup(self, *args) -> None:
        pass


class _NothingSaved(Exception):
    """Interrupted before the first frame: drop the (empty) temporary video."""


def run_stream(cfg: StreamConfig, segmenter=None, console=None,
               on_frame: Callable[[int], None] | None = None,
               shutdown: Shutdown | None = None) -> StreamResult:
    """Run the loop with ``cfg``; returns the stats (also written to ``cfg.json``).

    ``segmenter``: use this one instead of loading ``cfg.model`` (benchmarks). ``on_frame(n)``
    is called after each batch with the number of frames processed so far.

    SIGINT, SIGTERM and SIGHUP (and a KeyboardInterrupt) stop the loop cleanly: reading stops,
    the video is finalised with every frame processed so far, the JSON says ``interrupted`` and
    the ``signal``, the summary is printed; ``StreamResult.exit_code`` is 128 + the signal.
    A signal while the model loads stops the loading at once (stats with 0 frames, no
    video); a second signal during the loop stops at once. ``shutdown``: a :class:`Shutdown` the caller
    entered earlier (the CLI, so that a signal during its imports is not lost).
    """
    cfg.check()
    console = console or make_console()
    say = (lambda *a, **k: None) if cfg.quiet else console.print
    save_path = check_save_path(cfg.save) if cfg.save else None
    if cfg.json:
        check_json_path(cfg.json)
        if save_path is not None and Path(cfg.json).resolve() == save_path.resolve():
            raise UserError("--json and --save name the same file")
    if not cfg.headless:
        problem = gui_problem()
        if problem:
            raise UserError(f"{problem}; run with --headless (add --save OUT.mp4 to keep the video)")
    with (shutdown if shutdown is not None else Shutdown("flag")) as shutdown:
        source = open_source(cfg.source)
        try:
            if segmenter is None and not shutdown.requested:
                shutdown.on_signal = _abort_loading  # loading takes seconds: stop it at once
                try:
                    segmenter = load_segmenter(
                        cfg.model, cfg.backend, cfg.device, cfg.fp16, cfg.layer,
                        say=lambda m: console.print(m, markup=False), threads=cfg.threads,
                        overlapped=True)  # decode and drawing run beside inference
                except STOP as exc:
                    shutdown.request(getattr(exc, "signum", None) or signal.SIGINT)
                finally:
                    shutdown.on_signal = None
            if segmenter is None:  # a signal before the model was loaded: stats, 0 frames
                segmenter = _NotLoaded()
            return _run(cfg, source, segmenter, save_path, console, say, on_frame, shutdown)
        finally:
            source.close()


def _run(cfg: StreamConfig, source: FrameSource, seg, save_path: Path | None,
         console, say, on_frame, shutdown: Shutdown | None = None) -> StreamResult:
    shutdown = shutdown if shutdown is not None else Shutdown("flag")  # never entered: a flag
    info = source.info
    overlay = Overlay(cfg.alpha, heatmap=cfg.heatmap, labels=[info.label] if info.label else [])
    call_a = resolve_call_smoothing(seg.manifest, cfg.call_smoothing)
    stages = ("decode", "infer", "wait", "overlay") + (("write",) if save_path else ()) + \
        (() if cfg.headless else ("display",))
    stats = StreamStats(stages)
    h, w = info.size or (288, 384)
    say(f"[bold]rtseg stream[/]: {info.describe()} ({w}x{h} @ {info.fps:g} fps) -> "
        f"{seg.describe()}, input {seg.manifest.input_size}, batch {cfg.batch}")
    if not shutdown.requested:
        seg.warmup(h, w, cfg.batch)
    runner = Runner(seg, cfg.smooth, call_a) if not isinstance(seg, _NotLoaded) else None
    # a live source keeps only its newest frame: inference never works on a stale picture
    reader = FrameReader(source, 1 if info.live else cfg.queue_size, limit=cfg.max_frames,
                         loop=cfg.loop, retries=cfg.reconnect_retries,
                         retry_delay=cfg.reconnect_delay,
                         on_decode=lambda dt: stats.add_stage("decode", dt))
    stage = InferenceStage(reader, runner, cfg.batch, cfg.max_frames,
                           on_batch=lambda res, dt: stats.add_stage("infer", dt, len(res)))

    def stop_now(signum) -> None:  # a blocked read returns at once, no new batch starts
        reader.request_stop()
        stage.request_stop()

    shutdown.on_signal = stop_now
    window = None if cfg.headless else Window()
    run = _Run(cfg, stats, overlay, window)
    sink = None
    saved = save_path
    try:
        with contextlib.ExitStack() as stack:
            if save_path is not None:
                tmp = stack.enter_context(atomic_path(save_path))
                sink = run.sink = VideoSink(tmp, info.fps, str(save_path))
                stack.callback(sink.release)  # runs before the rename
            started = runner is not None and not shutdown.requested
            try:
                if started:
                    reader.start()
                    stage.start()
                    run.consume(stage, shutdown, reader, say, on_frame)
            except STOP as exc:  # a KeyboardInterrupt, or a second signal
                shutdown.request(getattr(exc, "signum", None) or signal.SIGINT)
            finally:
                if started:
                    stage.request_stop()
                    reader.stop()
                    stage.stop()
                if window is not None:
                    window.close()
            if shutdown.requested:
                say(f"[yellow]interrupted ({shutdown.name}): finishing the video file and the "
                    "statistics[/]")
            if sink is not None and sink.frames == 0:
                if shutdown.requested:
                    raise _NothingSaved
                raise UserError(f"no frame could be read from {info.describe()}; nothing saved")
            if sink is not None:
                sink.finish()  # a full disk: UserError, the earlier video is kept
    except _NothingSaved:
        saved = None
    return _finish(cfg, info, seg, run, reader, shutdown, call_a, saved, console)


class _Run:
    """The consumer stage: overlay, video file, window, statistics (this thread)."""

    def __init__(self, cfg: StreamConfig, stats: StreamStats, overlay: Overlay, window) -> None:
        self.cfg, self.stats, self.overlay, self.window = cfg, stats, overlay, window
        self.sink = None
        self.processed = self.called = 0
        self.t_start = time.perf_counter()

    def consume(self, stage: InferenceStage, shutdown: Shutdown, reader: FrameReader, say,
                on_frame) -> None:
        cfg, stats = self.cfg, self.stats
        next_log = time.perf_counter() + cfg.log_every if cfg.log_every > 0 else float("inf")
        ema_dt = None
        self.t_start = t_prev = time.perf_counter()
        while True:  # after a signal: the frames already segmented, then the end
            t0 = time.perf_counter()
            batch = stage.get()
            if batch is None:
                break
            stats.add_stage("wait", time.perf_counter() - t0, len(batch))
            quit_ = False
            for r in batch:
                quit_, paused = self.show(r, 1.0 / ema_dt if ema_dt else None, shutdown)
                t_prev += paused  # paused time is not frame time
                if quit_:
                    break
            t_now = time.perf_counter()
            n = len(batch)
            stats.add_frames(t_now - t_prev, n)
            dt = (t_now - t_prev) / n
            ema_dt = dt if ema_dt is None else 0.9 * ema_dt + 0.1 * dt
            t_prev = t_now
            self.processed += n
            self.called += sum(r.called for r in batch)
            if on_frame is not None:
                on_frame(self.processed)
            if quit_:
                break
            if t_now >= next_log:
                next_log = t_now + cfg.log_every
                _log_progress(say, stats, reader, self.processed)

    def show(self, r, fps_now, shutdown: Shutdown) -> tuple[bool, float]:
        """Draw, write and show one result: (quit?, seconds paused)."""
        stats = self.stats
        ta = time.perf_counter()
        vis = self.overlay.draw(r.image, r.mask, r.cam if self.cfg.heatmap else None, r.prob,
                                fps_now, box=r.box)
        tb = time.perf_counter()
        stats.add_stage("overlay", tb - ta)
        if r.t_capture is not None:
            stats.add_latency(tb - r.t_capture)
        if self.sink is not None:
            self.sink.write(vis)
            tc = time.perf_counter()
            stats.add_stage("write", tc - tb)
            tb = tc
        if self.window is None:
            return False, 0.0
        action = self.window.show(vis)
        stats.add_stage("display", time.perf_counter() - tb)
        paused = 0.0
        if action == "pause":
            tp = time.perf_counter()
            if not self.window.wait_unpause(lambda: shutdown.requested):
                action = "quit"
            paused = time.perf_counter() - tp
        return action == "quit", paused


def _finish(cfg: StreamConfig, info, seg, run: _Run, reader: FrameReader, shutdown: Shutdown,
            call_a: float, saved: Path | None, console) -> StreamResult:
    elapsed = time.perf_counter() - run.t_start
    counts = reader.snapshot()
    interrupted = shutdown.requested
    if run.processed == 0 and not interrupted:
        raise UserError(f"no frame could be read from {info.describe()}")
    sink = run.sink
    result = {
        "source": info.spec or "synthetic-demo",
        "source_kind": info.kind,
        "source_fps": info.fps,
        "frame_wh": [info.size[1], info.size[0]] if info.size else None,
        "backend": seg.name,
        "backend_choice": getattr(seg, "backend", seg.name),
        "device": seg.device,
        "model_input_size": seg.manifest.input_size,
        "batch": cfg.batch,
        "smooth": cfg.smooth,
        "call_smoothing": call_a,
        "frames_read": counts.read,
        "frames_processed": run.processed,
        "frames_called_polyp": run.called,
        "frames_dropped": counts.dropped,
        "frames_unreadable": counts.unreadable,
        "frames_written": sink.frames if sink is not None else 0,
        "source_lost": counts.lost,
        "reconnects": counts.reconnects,
        "loops": counts.loops,
        "interrupted": interrupted,
        "signal": shutdown.name if interrupted else None,
        "elapsed_s": elapsed,
        **run.stats.to_dict(),
        "saved": str(saved) if saved is not None else None,
        **cfg.extra,
    }
    if cfg.json:
        write_json(cfg.json, result)
    if not cfg.quiet:
        print_report(console, result)
    return StreamResult(result, interrupted, shutdown.name if interrupted else None,
                        shutdown.exit_code if interrupted else 0)


def _log_progress(say, stats: StreamStats, reader: FrameReader, processed: int) -> None:
    win = stats.window()
    st = stats.stage_summary()
    c = reader.snapshot()
    parts = " ".join(f"{k} {v['avg']:.1f}" for k, v in st.items())
    extra = f", dropped {c.dropped}" if c.dropped else ""
    extra += f", unreadable {c.unreadable}" if c.unreadable else ""
    say(f"frames {processed}{extra} | fps {win['fps']:.1f} (min {win['min_fps']:.1f}, "
        f"max {win['max_fps']:.1f}) | stage ms: {parts}")


