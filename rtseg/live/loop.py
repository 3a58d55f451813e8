"""``rtseg stream``: the live loop (capture -> segmenter -> overlay -> window / video file).

Threads: a daemon thread decodes the source into a small bounded queue
(:class:`rtseg.live.capture.FrameReader`: drop-oldest for cameras/URLs, blocking for files); the
calling thread runs everything else in order, per frame or per ``batch`` frames: segmenter
(preprocessing + forward + Grad-CAM + threshold, in the runtime backend), optional CAM
smoothing, overlay, video writer, window. OpenCV's GUI must run on the main thread, and the
segmenter already uses every core for its own maths, so more pipeline threads would not buy
throughput on CPU; decoding is the one stage that overlaps (OpenCV releases the GIL).

Statistics (:class:`rtseg.live.stats.StreamStats`) are running aggregates and fixed-size
reservoirs, so memory stays flat however long the run. Warm-up happens before the clock starts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import cv2
import numpy as np

from rtseg.atomic import atomic_path, ensure_parent, write_json
from rtseg.live.capture import FrameReader, FrameSource, open_source
from rtseg.errors import UserError
from rtseg.live.stats import TABLE2_FIELDS, StreamStats
from rtseg.live.overlay import Overlay
from rtseg.shutdown import STOP, Interrupted, Shutdown

WINDOW = "rtseg stream"
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


# --- the model ---------------------------------------------------------------------------
def default_model_available() -> bool:
    from rtseg.model.bundle import default_bundle_path
    from rtseg.model.manifest import MANIFEST

    return (default_bundle_path() / MANIFEST).is_file()


def untrained_fallback_bundle(input_size: int = 224, calibrate: bool = True, say=print):
    """TEMPORARY: used only while rtseg ships no trained default model. Remove with it.

    Prints one line saying so, and returns ``(bundle folder, keep-alive handle)``: a random-init
    EfficientNet-b1 whose BatchNorm statistics are re-estimated on synthetic frames (so its
    CAMs are not degenerate), saved to a temporary folder so that every runtime backend can load
    it. It is NOT a model: it finds nothing meaningful, and the loop labels its output
    "UNTRAINED" on every frame. The folder is deleted when the handle is garbage-collected.
    """
    import torch

    from rtseg.model.bundle import new_bundle, save_bundle
    from rtseg.model.preprocess import images_to_input
    from rtseg.synthetic import make_dataset

    say("warning: no trained model is shipped with rtseg yet and no --model was given: "
        "using an UNTRAINED network (BatchNorm calibrated on synthetic frames); "
        "its masks mean nothing")
    torch.manual_seed(0)
    bundle = new_bundle(input_size=input_size)
    if calibrate:
        samples = make_dataset(8, 8, size=(input_size, input_size), seed=0)
        x = images_to_input([s.image for s in samples], bundle.manifest)
        for m in bundle.model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None
        bundle.model.train()
        with torch.no_grad():
            bundle.model(x[:8])
            bundle.model(x[8:])
        bundle.model.eval()
    tmp = tempfile.TemporaryDirectory(prefix="rtseg-untrained-")
    path = save_bundle(bundle, Path(tmp.name) / "untrained")
    return str(path), tmp


def backends_here(device: str = "auto") -> list[str]:
    """``rtseg.runtime.available_backends`` (for ``device`` where the runtime takes one)."""
    from rtseg.runtime import available_backends

    try:
        return list(available_backends(device))
    except TypeError:  # an older runtime without the device argument
        return list(available_backends())


def check_backend(backend: str, device: str = "auto") -> None:
    import rtseg.runtime as rt

    known = set(getattr(rt, "BACKENDS", ())) | set(backends_here(device)) | {"auto"}
    if backend not in known:
        raise UserError(f"backend '{backend}' is not available here (available: "
                        f"{', '.join(backends_here(device))}; or auto)")


def create(model, backend: str = "auto", device: str = "auto", fp16: bool | None = None,
           layer=None, threads: int = 0):
    """``rtseg.runtime.create_segmenter``; ``threads`` (CPU threads) passed where supported."""
    from rtseg.runtime import create_segmenter

    if threads:
        try:
            return create_segmenter(model, backend, device, fp16, layer, threads=threads)
        except TypeError:  # a runtime without backend options
            pass
    return create_segmenter(model, backend, device, fp16, layer)


def load_segmenter(model: str | None, backend: str = "auto", device: str = "auto",
                   fp16: bool | None = None, layer=None, say=print, threads: int = 0):
    """(segmenter, untrained?) for ``model``; None = the default model, or the fallback."""
    check_backend(backend, device)
    if model is None and not default_model_available():
        path, keep = untrained_fallback_bundle(say=say)
        seg = create(path, backend, device, fp16, layer, threads)
        seg._rtseg_keep = keep  # the temporary bundle folder lives as long as the segmenter
        return seg, True
    return create(model, backend, device, fp16, layer, threads), False


# --- CAM smoothing -----------------------------------------------------------------------
class CamSmoother:
    """Exponential moving average of the CAM across frames, re-thresholded by ``policy``.

    ``cam_t = a * cam_{t-1} + (1 - a) * cam_new``; ``a = 0`` passes the segmenter's mask through.
    The manifest's mask post-processing (if any) runs after this, in the loop.
    """

    def __init__(self, a: float, policy) -> None:
        self.a = float(a)
        self.policy = policy
        self.state: np.ndarray | None = None

    def __call__(self, cam: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Batch [B, S, S] in frame order -> (smoothed cams, masks uint8)."""
        if self.a <= 0.0:
            return cam, mask
        out = np.empty_like(cam, dtype=np.float32)
        for i in range(cam.shape[0]):
            if self.state is None or self.state.shape != cam[i].shape:
                self.state = cam[i].astype(np.float32, copy=True)
            else:
                self.state *= self.a
                self.state += (1.0 - self.a) * cam[i]
            out[i] = self.state
        return out, np.asarray(self.policy.apply(out), dtype=np.uint8)


def refine_masks(masks: np.ndarray, steps) -> np.ndarray:
    """The manifest's post-processing steps (rtseg.model.postprocess) on masks [B, S, S] -> uint8."""
    from rtseg.model.postprocess import refine

    return refine(masks, steps).astype(np.uint8)


# --- the window ----------------------------------------------------------------------------
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


# --- the video file ------------------------------------------------------------------------
class VideoSink:
    """cv2.VideoWriter (mp4v) opened at the first frame; later frames resized to its size."""

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
            self.size = (w, h)
            self._vw = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"),
                                       self.fps, self.size)
            if not self._vw.isOpened():
                self._vw = None
                raise UserError(f"OpenCV cannot write video {self.shown_as} "
                                "(use a .mp4 or .avi name)")
        if (w, h) != self.size:
            img = cv2.resize(img, self.size, interpolation=cv2.INTER_AREA)
        self._vw.write(img)
        self.frames += 1

    def release(self) -> None:
        if self._vw is not None:
            self._vw.release()
            self._vw = None


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


# --- the loop ----------------------------------------------------------------------------
def make_console():
    """A rich console; when output goes to a file or pipe, wide enough for the tables."""
    from rich.console import Console

    wide = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    return Console(highlight=False, width=160 if wide else None)


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
    smoother = CamSmoother(cfg.smooth, seg.manifest.threshold)
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
    processed = 0
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
                    cams, masks = smoother(out.cam, out.mask)
                    if post:
                        masks = refine_masks(masks, post)
                    t2 = time.perf_counter()
                    stats.add_stage("infer", t2 - t1, n)
                    for i, fr in enumerate(batch):
                        ta = time.perf_counter()
                        fps_now = 1.0 / ema_dt if ema_dt else None
                        vis = overlay.draw(fr.image, masks[i], cams[i] if cfg.heatmap else None,
                                           float(out.prob[i]), fps_now,
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
        "frames_read": counts.read,
        "frames_processed": processed,
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


def table2_table(rows: list[dict[str, Any]], title: str, first: str = "run"):
    """A rich table in the layout of the paper's Table 2 (rows: dicts with TABLE2 keys)."""
    from rich.table import Table

    t = Table(title=title)
    t.add_column(first)
    for k in TABLE2_FIELDS:
        t.add_column(k + (" [ms]" if "time" in k else ""), justify="right")
    for r in rows:
        t.add_row(r["label"], *[_fmt(r.get(k)) for k in TABLE2_FIELDS])
    return t


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def print_report(console, result: dict[str, Any]) -> None:
    from rich.table import Table

    t2 = result["table2"]
    console.print(table2_table([{"label": f"{result['backend']} ({result['device']})", **t2}],
                               "end-to-end frame times (Table 2 layout)", "backend"))
    st = Table(title="per-stage times per frame [ms]")
    for c in ("stage", "avg", "median", "min", "max"):
        st.add_column(c, justify="right" if c != "stage" else "left")
    for k, v in result["stages_ms"].items():
        st.add_row(k, *(f"{v[c]:.2f}" for c in ("avg", "median", "min", "max")))
    console.print(st)
    console.print(
        f"frames read {result['frames_read']}, processed {result['frames_processed']}, "
        f"dropped {result['frames_dropped']}, unreadable {result['frames_unreadable']}"
        + (f", written {result['frames_written']} to {result['saved']}" if result["saved"] else "")
        + (" | source lost" if result["source_lost"] else "")
        + (f" | interrupted ({result.get('signal') or 'SIGINT'})" if result["interrupted"] else ""),
        markup=False)
    if result["untrained_model"]:
        console.print("[bold red]UNTRAINED model: the masks above mean nothing[/]")
