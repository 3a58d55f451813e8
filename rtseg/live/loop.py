"""``rtseg stream``: the live loop (capture -> segmenter -> overlay -> window / video file).

Threads: a daemon thread decodes the source into a small bounded queue
(:class:`rtseg.live.reader.FrameReader`: drop-oldest for cameras/URLs, blocking for files); the
calling thread runs everything else in order, per frame or per ``batch`` frames: segmenter
(preprocessing + forward + Grad-CAM + threshold, in the runtime backend), the filters across
frames (:mod:`rtseg.live.smoothing`: the call's moving average at the model's ``call_smoothing``,
optional CAM smoothing), overlay, video writer, window. OpenCV's GUI must run on the main thread, and the
segmenter already uses every core for its own maths, so more pipeline threads would not buy
throughput on CPU; decoding is the one stage that overlaps (OpenCV releases the GIL).

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

import numpy as np

from rtseg.atomic import atomic_path, write_json
from rtseg.live.capture import FrameSource, open_source
from rtseg.live.reader import FrameReader
from rtseg.errors import UserError
from rtseg.live.display import VideoSink, Window, check_json_path, check_save_path, gui_problem
from rtseg.live.report import print_report
from rtseg.live.smoothing import VideoFilters, check_call_smoothing
from rtseg.live.stats import StreamStats
from rtseg.live.overlay import Overlay
from rtseg.model.manifest import resolve_call_smoothing
from rtseg.runtime.loader import load_segmenter
from rtseg.ui import make_console
from rtseg.shutdown import STOP, Interrupted, Shutdown

UNTRAINED_LABEL = "UNTRAINED MODEL - NOT FOR CLINICAL USE"


@dataclass
class StreamConfig:
    source: str | None = None
    model: str | None = None
    backend: str = "auto"
    device: str = "auto"
    fp16: bool | None = None  # None: the backend's default
    threads: int = 0  # CPU threads for the segmenter (torch intra-op / onnxruntime); 0 = default
    layer: int | str | None = None
    headless: bool = False
    save: str | None = None
    max_frames: int | None = None
    json: str | None = None
    alpha: float = 0.4
    smooth: float = 0.0
    call_smoothing: float | None = None  # None: the model's (manifest ``call_smoothing``)
    heatmap: bool = False
    batch: int = 1
    loop: bool = False
    queue_size: int = 4
    reconnect_retries: int = 3  # live sources: reopen attempts after a failure
    reconnect_delay: float = 0.5  # seconds before the first attempt (doubling)
    log_every: float = 5.0  # seconds between progress lines; 0 = none
    quiet: bool = False  # no progress lines, no final tables (benchmarks)
    extra: dict[str, Any] = field(default_factory=dict)  # copied into the stats JSON

    def check(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise UserError(f"--alpha must be in [0, 1], got {self.alpha}")
        if not 0.0 <= self.smooth < 1.0:
            raise UserError(f"--smooth must be in [0, 1), got {self.smooth}")
        check_call_smoothing(self.call_smoothing)
        if self.batch < 1 or self.batch > 256:
            raise UserError(f"--batch must be 1..256, got {self.batch}")
        if self.max_frames is not None and self.max_frames < 1:
            raise UserError(f"--max-frames must be at least 1, got {self.max_frames}")
        if not self.log_every >= 0:  # also rejects NaN
            raise UserError(f"--log-every must be 0 (no progress lines) or more seconds, "
                            f"got {self.log_every}")
        if self.source is not None and not str(self.source).strip():
            raise UserError("--source is empty (an unset variable?); leave it out for the "
                            "synthetic demo clip")


def refine_masks(masks: np.ndarray, steps) -> np.ndarray:
    """The manifest's post-processing steps (rtseg.model.postprocess) on masks [B, S, S] -> uint8."""
    from rtseg.model.postprocess import refine

    return refine(masks, steps).astype(np.uint8)


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
            untrained = False
            if segmenter is None and not shutdown.requested:
                shutdown.on_signal = _abort_loading  # loading takes seconds: stop it at once
                try:
                    segmenter, untrained = load_segmenter(
                        cfg.model, cfg.backend, cfg.device, cfg.fp16, cfg.layer,
                        say=lambda m: console.print(m, markup=False), threads=cfg.threads)
                except STOP as exc:
                    shutdown.request(getattr(exc, "signum", None) or signal.SIGINT)
                finally:
                    shutdown.on_signal = None
            if segmenter is None:  # a signal before the model was loaded: stats, 0 frames
                segmenter = _NotLoaded()
            return _run(cfg, source, segmenter, untrained, save_path, console, say, on_frame,
                        shutdown)
        finally:
            source.close()


def _run(cfg: StreamConfig, source: FrameSource, seg, untrained: bool, save_path: Path | None,
         console, say, on_frame, shutdown: Shutdown | None = None) -> StreamResult:
    shutdown = shutdown if shutdown is not None else Shutdown("flag")  # never entered: a flag
    info = source.info
    labels = [info.label] if info.label else []
    overlay = Overlay(cfg.alpha, heatmap=cfg.heatmap, labels=labels,
                      warning="UNTRAINED" if untrained else None)
    call_a = resolve_call_smoothing(seg.manifest, cfg.call_smoothing)
    filters = VideoFilters(cfg.smooth, call_a, seg.manifest.threshold)
    post = tuple(getattr(seg.manifest, "postprocess", ()) or ())  # the manifest's mask clean-up
    stages = ("decode", "wait", "infer", "overlay") + (("write",) if save_path else ()) + \
        (() if cfg.headless else ("display",))
    stats = StreamStats(stages)
    h, w = info.size or (288, 384)
    say(f"[bold]rtseg stream[/]: {info.describe()} ({w}x{h} @ {info.fps:g} fps) -> "
        f"{seg.describe()}, input {seg.manifest.input_size}, batch {cfg.batch}"
        + (" [bold red]UNTRAINED[/]" if untrained else ""))
    if not shutdown.requested:
        seg.warmup(h, w, cfg.batch)

    window = None if cfg.headless else Window()
    reader = FrameReader(source, cfg.queue_size, limit=cfg.max_frames, loop=cfg.loop,
                         retries=cfg.reconnect_retries, retry_delay=cfg.reconnect_delay,
                         on_decode=lambda dt: stats.add_stage("decode", dt))
    shutdown.on_signal = lambda signum: reader.request_stop()  # a blocked read returns at once
    processed = called = 0  # frames, and those called polyp (the label drawn: after the call's filter)
    interrupted = quit_ = False
    ema_dt = None
    sink = None
    t_start = time.perf_counter()
    next_log = t_start + cfg.log_every if cfg.log_every > 0 else float("inf")
    saved = save_path
    try:
        with contextlib.ExitStack() as stack:
            if save_path is not None:
                tmp = stack.enter_context(atomic_path(save_path))
                sink = VideoSink(tmp, info.fps, str(save_path))
                stack.callback(sink.release)  # runs before the rename
            reader.start()
            try:
                t_prev = time.perf_counter()
                while not quit_ and not shutdown.requested:
                    t0 = time.perf_counter()
                    want = (cfg.batch if cfg.max_frames is None
                            else min(cfg.batch, cfg.max_frames - processed))
                    batch = reader.get_batch(want)
                    if batch is None:
                        break
                    n = len(batch)
                    t1 = time.perf_counter()
                    stats.add_stage("wait", t1 - t0, n)
                    frames = batch[0].image[None] if n == 1 else np.stack([f.image for f in batch])
                    out = seg(frames)
                    probs, cams, masks = filters(out.prob, out.cam, out.mask)
                    if post:
                        masks = refine_masks(masks, post)
                    t2 = time.perf_counter()
                    stats.add_stage("infer", t2 - t1, n)
                    for i, fr in enumerate(batch):
                        ta = time.perf_counter()
                        fps_now = 1.0 / ema_dt if ema_dt else None
                        vis = overlay.draw(fr.image, masks[i], cams[i] if cfg.heatmap else None,
                                           float(probs[i]), fps_now,
                                           box=out.boxes[i] if out.boxes else None)
                        tb = time.perf_counter()
                        stats.add_stage("overlay", tb - ta)
                        if sink is not None:
                            sink.write(vis)
                            tc = time.perf_counter()
                            stats.add_stage("write", tc - tb)
                            tb = tc
                        if window is not None:
                            action = window.show(vis)
                            stats.add_stage("display", time.perf_counter() - tb)
                            if action == "pause":
                                tp = time.perf_counter()
                                if not window.wait_unpause(lambda: shutdown.requested):
                                    action = "quit"
                                t_prev += time.perf_counter() - tp  # paused time is not frame time
                            if action == "quit":
                                quit_ = True
                    t_now = time.perf_counter()
                    dt = (t_now - t_prev) / n
                    stats.add_frames(t_now - t_prev, n)
                    ema_dt = dt if ema_dt is None else 0.9 * ema_dt + 0.1 * dt
                    t_prev = t_now
                    processed += n
                    called += int((np.asarray(probs) > 0.5).sum())
                    if on_frame is not None:
                        on_frame(processed)
                    if cfg.max_frames is not None and processed >= cfg.max_frames:
                        break
                    if t_now >= next_log:
                        next_log = t_now + cfg.log_every
                        _log_progress(say, stats, reader, processed)
            except STOP as exc:  # a KeyboardInterrupt, or a second signal
                shutdown.request(getattr(exc, "signum", None) or signal.SIGINT)
            finally:
                reader.stop()
                if window is not None:
                    window.close()
            interrupted = shutdown.requested
            if interrupted:
                say(f"[yellow]interrupted ({shutdown.name}): finishing the video file and the "
                    "statistics[/]")
            if sink is not None and sink.frames == 0:
                if interrupted:
                    raise _NothingSaved
                raise UserError(f"no frame could be read from {info.describe()}; nothing saved")
            if sink is not None:
                sink.finish()  # a full disk: UserError, the earlier video is kept
    except _NothingSaved:
        saved = None
    elapsed = time.perf_counter() - t_start
    counts = reader.snapshot()
    if processed == 0 and not interrupted:
        raise UserError(f"no frame could be read from {info.describe()}")
    result = {
        "source": info.spec or "synthetic-demo",
        "source_kind": info.kind,
        "source_fps": info.fps,
        "frame_wh": [info.size[1], info.size[0]] if info.size else None,
        "backend": seg.name,
        "backend_choice": getattr(seg, "backend", seg.name),
        "device": seg.device,
        "model_input_size": seg.manifest.input_size,
        "untrained_model": untrained,
        "batch": cfg.batch,
        "smooth": cfg.smooth,
        "call_smoothing": call_a,
        "frames_read": counts.read,
        "frames_processed": processed,
        "frames_called_polyp": called,
        "frames_dropped": counts.dropped,
        "frames_unreadable": counts.unreadable,
        "frames_written": sink.frames if sink is not None else 0,
        "source_lost": counts.lost,
        "reconnects": counts.reconnects,
        "loops": counts.loops,
        "interrupted": interrupted,
        "signal": shutdown.name if interrupted else None,
        "elapsed_s": elapsed,
        **stats.to_dict(),
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


