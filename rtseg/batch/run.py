"""The ``rtseg batch`` driver: resume, Ray Data actor pool, progress, manifest, totals.

Steps: check the options and ``--out`` (one error line for bad input), find the inputs
(:func:`rtseg.batch.inputs.discover`), take ``OUT/.lock`` (one batch per output folder at a
time), remove what a killed run left in ``OUT/.work``, load the model once in the driver (a
bundle is exported to the fused ONNX graph here, once; workers receive the graph's bytes, so
a cluster needs no shared model path), plan the units, skip those whose done-marker carries
their signature, and send the rest through a Ray Data actor pool of ``workers`` actors (each
with ``threads`` inference threads and its own decode thread), largest first so that no worker
is left with a long video at the end. Workers report frames to a small progress actor; the
driver draws a rich progress bar (files, frames, frames/s), writes ``OUT/manifest.json``
(atomically, every few seconds and at the end) and prints a table of totals.

``manifest.json``: ``input``, ``model``, ``options``, ``ray``, ``totals`` (files, frames,
failures, wall time, frames/s), ``done`` (one entry per video and per image folder, with its
output folder, tables and ``this_run``), ``failed`` (``source`` and a one-line ``reason``: an
unreadable video, an unreadable image, a unit whose worker died), ``complete`` (false while
running or after a kill).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rtseg.batch.inputs import MANIFEST, WORK_DIR, digest, discover, plan_units, read_done
from rtseg.batch.state import RunState, known_failures, merge_folders
from rtseg.errors import UserError
from rtseg.pipeline.options import FrameOptions

TABLES = ("parquet", "csv")


@dataclass
class BatchConfig(FrameOptions):
    input: str
    out: str
    model: str | None = None
    backend: str = "auto"
    device: str = "auto"
    workers: int | None = None  # None: one per CPU core here (local) / per `threads` CPUs (cluster)
    threads: int = 1  # inference threads per worker
    address: str | None = None
    save_video: bool = False
    save_masks: bool = False
    table: str = "parquet"
    chunk: int = 256  # images per work unit
    progress: bool = True
    quiet: bool = False

    def check(self) -> None:
        super().check()  # batch, smooth, call smoothing, alpha
        if self.workers is not None and self.workers < 1:
            raise UserError(f"--workers must be at least 1, got {self.workers}")
        if self.threads < 1:
            raise UserError(f"--threads must be at least 1, got {self.threads}")
        if self.table not in TABLES:
            raise UserError(f"--table must be parquet or csv, got {self.table!r}")
        if self.chunk < 1:
            raise UserError(f"--chunk must be at least 1, got {self.chunk}")

    def output_options(self) -> dict:
        """The options that change outputs (part of every unit's signature)."""
        return {k: getattr(self, k) for k in ("backend", "device", "layer", "save_video",
                                               "save_masks", "table", "batch", "smooth",
                                               "call_smoothing", "alpha", "heatmap")}


def cpu_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


# --- the output folder ------------------------------------------------------------------------
def prepare_out(path: str) -> Path:
    from rtseg.evaluate.predict import prepare_out_dir

    if not str(path).strip():
        raise UserError("--out is empty")
    out = prepare_out_dir(path)
    probe = out / f".rtseg-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write to output folder {out}: {exc.strerror or exc}") from None
    return Path(os.path.abspath(out))


@contextlib.contextmanager
def out_lock(out: Path):
    """``OUT/.lock`` (flock) for the block: a second batch on the same folder is an error."""
    import fcntl

    fh = open(out / ".lock", "a+")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UserError(f"another rtseg batch is writing to {out}") from None
        yield
    finally:
        fh.close()


def clean_work(out: Path) -> int:
    """Remove what killed runs left in ``OUT/.work``; returns how many entries."""
    work = out / WORK_DIR
    if not work.is_dir():
        return 0
    n = 0
    for p in work.iterdir():
        n += 1
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                p.unlink()
    with contextlib.suppress(OSError):
        work.rmdir()  # only when empty
    return n


# --- the model ----------------------------------------------------------------------------------
def prepare_model(cfg: BatchConfig, say=print) -> dict:
    """Load the model once here; returns the payload every worker builds its segmenter from."""
    import hashlib

    from rtseg.model.bundle import default_bundle_path
    from rtseg.runtime.loader import load_segmenter

    model = cfg.model
    seg = load_segmenter(model, cfg.backend, cfg.device, None, cfg.layer, say=say, threads=1)
    path = getattr(seg, "path", None)
    if model is not None and Path(model).is_file():  # --model an .onnx / .engine file
        path = Path(model)
    if path is not None and Path(path).is_file():  # an ONNX graph (exported once, cached) / engine
        files = {Path(path).name: Path(path).read_bytes()}
        entry, layer = Path(path).name, None
    else:
        folder = Path(model) if model is not None else default_bundle_path()
        files = {f.name: f.read_bytes() for f in sorted(folder.iterdir()) if f.is_file()}
        entry, layer = "", cfg.layer
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    payload = {"files": files, "entry": entry, "backend": getattr(seg, "backend", cfg.backend),
               # "auto" as the driver resolved it (a GPU cluster: --device cuda)
               "device": seg.device if cfg.device == "auto" else cfg.device,
               "layer": layer,
               "sha256": h.hexdigest(), "describe": seg.describe(),
               "input_size": int(seg.manifest.input_size), "spec": cfg.model or "default model"}
    del seg
    return payload


def build_segmenter(payload: dict, threads: int = 1):
    """A worker's segmenter from :func:`prepare_model`'s payload (files in a temporary folder,
    removed once the segmenter has loaded them)."""
    from rtseg.runtime.loader import create

    tmp = Path(tempfile.mkdtemp(prefix="rtseg-batch-model-"))
    try:
        for name, data in payload["files"].items():
            (tmp / name).write_bytes(data)
        target = tmp / payload["entry"] if payload["entry"] else tmp
        if payload["backend"] == "onnxruntime" and payload["device"] == "cpu":
            # the runtime's own ONNX segmenter, without create_segmenter's device probe (which
            # imports torch: seconds per worker start on a busy machine)
            from rtseg.runtime.active import ViewSegmenter
            from rtseg.runtime.onnx_backend import OnnxSegmenter

            # behind the same active-area view as every segmenter create_segmenter returns
            return ViewSegmenter(OnnxSegmenter(target, "cpu", False, threads=threads))
        return create(str(target), payload["backend"], payload["device"], None, payload["layer"],
                      threads)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class UnitWorker:
    """The Ray Data actor: one segmenter, then one unit per call (``{"unit": json}``)."""

    def __init__(self, payload, options: dict, counter=None) -> None:
        import cv2

        if isinstance(payload, list):  # [ObjectRef]: the model's bytes, put once by the driver
            import ray

            payload = ray.get(payload[0])

        cv2.setNumThreads(1)
        threads = int(options.get("threads", 1))
        if payload["backend"].startswith("torch"):
            import torch

            torch.set_num_threads(threads)
        from rtseg.batch.work import UnitContext

        seg = build_segmenter(payload, threads)
        report = (lambda n: counter.add.remote(n)) if counter is not None else None
        self.ctx = UnitContext(seg, options, report)

    def __call__(self, row: dict) -> dict:
        from rtseg.batch.work import process_unit

        return {"result": json.dumps(process_unit(json.loads(row["unit"]), self.ctx))}


def _counter_actor(ray):
    @ray.remote(num_cpus=0)
    class FrameCounter:
        def __init__(self) -> None:
            self.n = 0

        def add(self, n: int) -> None:
            self.n += int(n)

        def get(self) -> int:
            return self.n

    return FrameCounter.remote()


# --- the run (its state: rtseg.batch.state) ---------------------------------------------------


def _progress(console, enabled: bool):
    from rtseg.ui import progress_bar

    return progress_bar("[bold]{task.description}", "files", "{task.fields[frames]} frames",
                        "{task.fields[fps]:.1f} frames/s", eta=False, console=console,
                        disable=not enabled, transient=False)


def run_batch(cfg: BatchConfig, console=None) -> dict:
    """Run ``cfg``; returns the final manifest (also in ``OUT/manifest.json``)."""
    from rtseg.ui import make_console

    from rtseg.batch.raysession import import_ray

    cfg.check()
    import_ray()  # not installed: say so before any work
    console = console or make_console()
    say = (lambda *a, **k: None) if cfg.quiet else (lambda m: console.print(m, markup=False))
    if cfg.address is not None:
        from rtseg.batch.raysession import check_address

        check_address(cfg.address)  # a bad address fails before any work
    inp = discover(cfg.input, Path(os.path.abspath(cfg.out)) if str(cfg.out).strip() else None)
    out = prepare_out(cfg.out)  # after the input: a bad input creates no folder
    with out_lock(out):
        left = clean_work(out)
        if left:
            say(f"removed {left} unfinished unit(s) of an earlier run from {out / WORK_DIR}")
        payload = prepare_model(cfg, say)
        sig = digest({**cfg.output_options(), "model": payload["sha256"]})
        units = plan_units(inp, out, sig, cfg.chunk)
        state = RunState(cfg, out, payload, inp, units)
        known_bad = known_failures(out)
        todo = []
        for u in units:
            d = read_done(u["final"])
            if d is not None and d.get("status") == "done" and d.get("signature") == u["signature"]:
                state.results[u["id"]] = d
            elif u["id"] in known_bad and known_bad[u["id"]].get("signature") == u["signature"]:
                state.results[u["id"]] = known_bad[u["id"]]  # the same bad file: not retried
            else:
                todo.append(u)
        n_bad = sum(1 for r in state.results.values() if r.get("status") != "done")
        n_skip = len(units) - len(todo) - n_bad
        say(f"rtseg batch: {len(inp.videos)} video(s), {len(inp.images)} image(s) under "
            f"{cfg.input} -> {out}; {payload['describe']}"
            + (f"; {n_skip} unit(s) already done" if n_skip else "")
            + (f"; {n_bad} unreadable file(s) unchanged since the last run (not retried)"
               if n_bad else ""))
        try:
            if todo:
                _dispatch(cfg, state, todo, console, say)
            merge_folders(state)
            clean_work(out)
            manifest = state.write(complete=True, force=True)
        except BaseException:  # Ctrl-C, SIGTERM (rtseg.shutdown): Ray is down by now
            with contextlib.suppress(Exception):
                state.collect_finished()  # a unit done on disk counts, reported or not
                state.write(complete=False, force=True)
            with contextlib.suppress(Exception):
                clean_work(out)  # the units in flight: redone by the next run
            raise
    if not cfg.quiet:
        print_totals(console, manifest)
    return manifest


def _dispatch(cfg: BatchConfig, state: RunState, todo: list[dict], console, say) -> None:
    from rtseg.batch.raysession import import_ray, ray_session, without_ray_restart_notice

    import_ray()
    local_workers = cfg.workers or cpu_cores()
    with ray_session(local_workers, cfg.threads, cfg.address) as info:
        import ray
        import ray.data

        workers = cfg.workers
        if workers is None:
            workers = local_workers if cfg.address is None else max(1, int(info["cpus"] // cfg.threads))
        cfg.workers = workers
        state.ray = {"address": info["address"], "cluster_cpus": info["cpus"], "workers": workers,
                     "threads_per_worker": cfg.threads, "started_here": info["started"]}
        counter = _counter_actor(ray)
        options = {**cfg.output_options(), "threads": cfg.threads}
        order = sorted(todo, key=lambda u: -u["weight"])  # largest first: no long tail
        items = [{"unit": json.dumps(u)} for u in order]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        remote_args: dict[str, Any] = {"num_cpus": cfg.threads}
        if str(cfg.device).startswith("cuda"):
            remote_args["num_gpus"] = 1
        # a unit whose worker dies is not retried (it may be the file that kills it): it is
        # reported as failed, and the actor restarts for the other units. Ray Data has no named
        # parameter for these (yet): its deprecation warning for **ray_remote_args is muted.
        remote_args.update(max_restarts=3, max_task_retries=0)
        # the model goes into the object store once; the actors' constructor arguments stay
        # small (a reference in a list is passed as it is, not resolved by Ray)
        payload_ref = [ray.put(state.payload)]
        map_kw = dict(fn_constructor_kwargs={"payload": payload_ref, "options": options,
                                             "counter": counter},
                      compute=ray.data.ActorPoolStrategy(size=min(workers, len(items)),
                                                         max_tasks_in_flight_per_actor=1))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*")
            try:
                ds = ds.map(UnitWorker, **map_kw, **remote_args)
            except TypeError:  # a Ray without **ray_remote_args: its defaults
                remote_args.pop("max_restarts"), remote_args.pop("max_task_retries")
                ds = ds.map(UnitWorker, **map_kw, **remote_args)
        total_files = sum(1 if u["kind"] == "video" else len(u["files"]) for u in todo)
        stop = threading.Event()
        progress = _progress(console, cfg.progress and not cfg.quiet)
        with progress, without_ray_restart_notice():
            task = progress.add_task("batch", total=total_files, frames=0, fps=0.0)
            state.t_work = time.time()

            def poll() -> None:
                while not stop.wait(0.5):
                    try:
                        n = ray.get(counter.get.remote(), timeout=5)
                    except Exception:  # noqa: BLE001 - progress is best effort
                        continue
                    dt = max(1e-6, time.time() - state.t_work)
                    progress.update(task, frames=n, fps=n / dt)

            th = threading.Thread(target=poll, name="rtseg-batch-progress", daemon=True)
            th.start()
            try:
                for row in ds.iter_rows():
                    r = json.loads(row["result"])
                    with state.lock:
                        state.results[r["id"]] = r
                        state.this_run.add(r["id"])
                    if r["status"] != "done":
                        say(f"failed: {r['source']}: {r.get('reason')}")
                    progress.advance(task, r.get("files", 1))
                    state.write()
            finally:
                stop.set()
                th.join(timeout=2)
                state.t_work_end = time.time()
                with contextlib.suppress(Exception):
                    n = ray.get(counter.get.remote(), timeout=5)
                    progress.update(task, frames=n,
                                    fps=n / max(1e-6, state.t_work_end - state.t_work))
        for u in todo:  # a unit without a result: its worker died
            if u["id"] not in state.results:
                state.results[u["id"]] = {"id": u["id"], "kind": u["kind"], "source": u["source"],
                                          "status": "failed", "frames": 0,
                                          "reason": "its Ray worker died (crash or out of memory); "
                                                    "rerun to retry"}
                state.this_run.add(u["id"])


def print_totals(console, manifest: dict) -> None:
    from rich.table import Table

    t = manifest["totals"]
    tab = Table(title="rtseg batch: totals")
    for c in ("files", "done now", "already done", "failed", "frames", "wall time [s]",
              "frames/s"):
        tab.add_column(c, justify="right")
    fps = t["frames_per_s"]
    tab.add_row(str(t["files"]), str(t["files_this_run"]), str(t["files_already_done"]),
                str(t["failed"]), str(t["frames_this_run"]), f"{t['wall_s']:.1f}",
                "-" if not fps else f"{fps:.1f}")
    console.print(tab)
    for f in manifest["failed"][:10]:
        console.print(f"failed: {f['source']}: {f['reason']}", markup=False)
    if len(manifest["failed"]) > 10:
        console.print(f"... and {len(manifest['failed']) - 10} more (see manifest.json)")
    console.print(f"manifest: {Path(manifest['out']) / MANIFEST}", markup=False)


__all__ = ["BatchConfig", "run_batch", "prepare_model", "build_segmenter", "UnitWorker",
           "print_totals"]
