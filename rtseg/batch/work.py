"""One work unit of ``rtseg batch``, without Ray: a video, or a chunk of an image folder.

Per frame this is the pipeline of ``rtseg stream``, so the outputs are the stream's:
:func:`rtseg.live.capture.open_source` and :class:`~rtseg.live.reader.FrameReader` (decode thread,
frame indices counting corrupt frames), :class:`rtseg.pipeline.runner.Runner` on ``batch`` frames
(the segmenter, ``--smooth``, ``--call-smoothing``, the mask at frame size, its largest box),
:meth:`~rtseg.live.overlay.Overlay.draw` and :class:`~rtseg.live.display.VideoSink` for
``--save-video`` (without the live fps text, which is a timing and not an output).

Per-frame table columns (:data:`COLUMNS`): ``frame`` (index in the source), ``time_s``
(frame / fps), ``prob`` (polyp probability; on videos after the call's moving average, the
model's ``call_smoothing`` or ``--call-smoothing``, as ``rtseg stream`` draws it), ``mask_pixels`` and ``mask_area`` (pixels and
fraction of the frame, at frame size), ``bbox_x, bbox_y, bbox_w, bbox_h`` (the largest
8-connected component at frame size; -1 when the mask is empty). Image tables have ``path``,
``mask`` (file name in ``masks/``), ``width``, ``height`` instead of ``frame``/``time_s``.

Safety: a unit writes everything into a fresh staging folder below ``OUT/.work``; last its
done-marker (atomically), then the folder is renamed onto its final place. So a killed run
leaves half-written files only in ``OUT/.work`` (removed by the next run), and a final folder
is always complete. An image chunk first moves its mask PNGs (each complete) into the folder's
``masks/``; if it is killed in between, the next run redoes the chunk and writes the same files.
"""

from __future__ import annotations

import contextlib
import csv
from array import array
import os
import shutil
import time
import traceback
import uuid
from pathlib import Path
from typing import Callable

import numpy as np

from rtseg.atomic import atomic_path, write_json
from rtseg.batch.inputs import DONE, MASKS_DIR, WORK_DIR
from rtseg.errors import UserError, first_line
from rtseg.model.call import is_polyp
from rtseg.pipeline.runner import mask_stats  # noqa: F401 - the per-frame table's numbers

COLUMNS = ("frame", "time_s", "prob", "mask_pixels", "mask_area", "bbox_x", "bbox_y", "bbox_w",
           "bbox_h")
# typed columns (array.array): hours of video stay a few MB per worker, not Python objects
TYPECODES = {"frame": "q", "time_s": "d", "prob": "f", "mask_pixels": "q", "mask_area": "f",
             "bbox_x": "i", "bbox_y": "i", "bbox_w": "i", "bbox_h": "i"}
IMAGE_COLUMNS = ("path", "mask", "width", "height", "prob", "mask_pixels", "mask_area",
                 "bbox_x", "bbox_y", "bbox_w", "bbox_h")
VIDEO_NAME = "overlay.mp4"
REPORT_EVERY = 0.5  # seconds between progress reports to the driver


def table_name(stem: str, fmt: str) -> str:
    return f"{stem}.{'parquet' if fmt == 'parquet' else 'csv'}"


def write_table(path: Path, columns: tuple[str, ...], rows: dict, fmt: str) -> None:
    """A table (dict of columns) as Parquet (pyarrow) or CSV, atomically."""
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        types = {"frame": pa.int64(), "time_s": pa.float64(), "prob": pa.float32(),
                 "mask_pixels": pa.int64(), "mask_area": pa.float32(), "width": pa.int32(),
                 "height": pa.int32(), "path": pa.string(), "mask": pa.string()}
        arrays = [pa.array(np.asarray(rows[c]) if isinstance(rows[c], array) else rows[c],
                           type=types.get(c, pa.int32())) for c in columns]
        with atomic_path(path) as tmp:
            pq.write_table(pa.Table.from_arrays(arrays, names=list(columns)), str(tmp))
        return
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(columns)
            for vals in zip(*(rows[c] for c in columns)):
                w.writerow([repr(float(v)) if isinstance(v, (float, np.floating)) else v
                            for v in vals])


def read_table(path: Path):
    """A table written by :func:`write_table` as a pyarrow Table (Parquet) or list of dicts."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(str(path))
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


class BadInput(UserError):
    """The unit's file cannot be read: not retried on a rerun while the file is unchanged."""


def one_line(exc: BaseException) -> str:
    if isinstance(exc, UserError):
        return first_line(exc, limit=10**9, default="error")
    return f"{type(exc).__name__}: {first_line(exc, limit=10**9, default='')}".strip()[:300]


# --- staging and publishing -----------------------------------------------------------------
def new_staging(out: Path) -> Path:
    d = out / WORK_DIR / f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    d.mkdir(parents=True, exist_ok=False)
    return d


def publish_dir(staging: Path, final: Path, out: Path) -> None:
    """Rename ``staging`` onto ``final`` (an older ``final`` is moved aside first, then removed)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if final.exists():
        old = out / WORK_DIR / f"old-{uuid.uuid4().hex[:12]}"
        os.replace(final, old)
    os.replace(staging, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --- the context a worker keeps between units -----------------------------------------------
class UnitContext:
    """A segmenter and the options; ``report(frames)`` is called as frames are done."""

    def __init__(self, seg, options: dict, report: Callable[[int], None] | None = None) -> None:
        self.seg = seg
        self.options = options
        self.report = report or (lambda n: None)

    def overlay(self, labels=()):
        from rtseg.live.overlay import Overlay

        o = self.options
        return Overlay(o.get("alpha", 0.4), heatmap=o.get("heatmap", False), labels=labels)


class _Reporter:
    def __init__(self, report: Callable[[int], None]) -> None:
        self.report, self.pending, self.t = report, 0, time.perf_counter()

    def add(self, n: int) -> None:
        self.pending += n
        now = time.perf_counter()
        if now - self.t >= REPORT_EVERY:
            self.flush()
            self.t = now

    def flush(self) -> None:
        if self.pending:
            self.report(self.pending)
            self.pending = 0


def process_unit(unit: dict, ctx: UnitContext) -> dict:
    """Do one unit (see the module doc); returns its result; never raises for bad input."""
    out = Path(unit["out"])
    t0 = time.perf_counter()
    staging = None
    res = {"id": unit["id"], "kind": unit["kind"], "source": unit["source"], "status": "failed",
           "frames": 0, "files": 1 if unit["kind"] == "video" else len(unit["files"]),
           "t_start": time.time()}
    try:
        staging = new_staging(out)
        if unit["kind"] == "video":
            res.update(_video(unit, ctx, staging))
        else:
            res.update(_images(unit, ctx, staging))
        res["seconds"] = round(time.perf_counter() - t0, 3)
        res["t_end"] = time.time()
        res["status"] = "done"
        res["signature"] = unit["signature"]
        res["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        write_json(staging / DONE, res)  # the done-marker, after every output
        publish_dir(staging, Path(unit["final"]), out)
        staging = None
    except Exception as exc:  # noqa: BLE001 - a bad file fails its unit only
        res["reason"] = one_line(exc)
        res["signature"] = unit["signature"]
        res["bad_input"] = isinstance(exc, BadInput)  # not retried while the file is unchanged
        if not isinstance(exc, UserError):
            res["traceback"] = traceback.format_exc(limit=8)[-2000:]
        res["seconds"] = round(time.perf_counter() - t0, 3)
        res["t_end"] = time.time()
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return res


def _video(unit: dict, ctx: UnitContext, staging: Path) -> dict:
    from rtseg.live.capture import open_source
    from rtseg.live.reader import FrameReader
    from rtseg.evaluate.predict import write_mask
    from rtseg.live.display import VideoSink
    from rtseg.model.manifest import resolve_call_smoothing
    from rtseg.pipeline.runner import Runner

    o = ctx.options
    try:
        source = open_source(unit["source"])
    except UserError as exc:
        raise BadInput(str(exc)) from None
    info = source.info
    fps = float(info.fps)
    overlay = ctx.overlay([info.label] if info.label else [])
    runner = Runner(ctx.seg, o.get("smooth", 0.0),
                    resolve_call_smoothing(ctx.seg.manifest, o.get("call_smoothing")))
    rows = {c: array(TYPECODES[c]) for c in COLUMNS}
    save_video, save_masks = o.get("save_video", False), o.get("save_masks", False)
    heatmap = o.get("heatmap", False)
    sink = VideoSink(staging / VIDEO_NAME, fps, unit["source"]) if save_video else None
    if save_masks:
        (staging / MASKS_DIR).mkdir()
    rep = _Reporter(ctx.report)
    reader = FrameReader(source, queue_size=8)
    wh = None
    try:
        reader.start()
        while True:
            batch = reader.get_batch(int(o.get("batch", 1)))
            if batch is None:
                break
            for r in runner([f.image for f in batch], [f.index for f in batch]):
                h, w = r.mask.shape
                wh = wh or [w, h]
                pixels, x, y, bw, bh = r.largest_box()
                if save_masks:
                    write_mask(staging / MASKS_DIR / f"{r.index:06d}.png", r.mask)
                for c, v in zip(COLUMNS, (r.index, r.index / fps, r.prob, pixels,
                                          pixels / float(h * w), x, y, bw, bh)):
                    rows[c].append(v)
                if sink is not None:
                    sink.write(overlay.draw(r.image, r.mask, r.cam if heatmap else None, r.prob,
                                            None, box=r.box))
            rep.add(len(batch))
    finally:
        reader.stop()
        if sink is not None:
            sink.release()
        rep.flush()
    if sink is not None:
        sink.finish()  # a video that does not decode (a full disk): the unit fails, said so
    counts = reader.snapshot()
    n = len(rows["frame"])
    if n == 0:
        raise BadInput(f"no frame could be read from {unit['source']}"
                        + (f" ({counts.unreadable} unreadable)" if counts.unreadable else ""))
    table = table_name("frames", o.get("table", "parquet"))
    write_table(staging / table, COLUMNS, rows, o.get("table", "parquet"))
    outputs = {"table": table}
    if sink is not None:
        outputs["video"] = VIDEO_NAME
    if save_masks:
        outputs["masks"] = MASKS_DIR
    return {"frames": n, "unreadable": counts.unreadable, "fps": fps, "frame_wh": wh,
            "polyp_frames": int(sum(is_polyp(float(p)) for p in rows["prob"])), "outputs": outputs}


def _images(unit: dict, ctx: UnitContext, staging: Path) -> dict:
    from rtseg.imageio import try_read_image
    from rtseg.evaluate.predict import write_mask
    from rtseg.pipeline.runner import Runner

    o = ctx.options
    runner = Runner(ctx.seg)  # stills: no smoothing
    rows: dict[str, list] = {c: [] for c in IMAGE_COLUMNS}
    failed: list[dict] = []
    (staging / MASKS_DIR).mkdir()
    rep = _Reporter(ctx.report)
    try:
        for path, name in zip(unit["files"], unit["names"]):
            img = try_read_image(Path(path))
            if img is None:
                failed.append({"source": path, "reason": "not a readable image"})
                continue
            r = runner([np.ascontiguousarray(img[..., ::-1])])[0]  # BGR, as rtseg predict reads it
            h, w = img.shape[:2]
            pixels, x, y, bw, bh = r.largest_box()
            write_mask(staging / MASKS_DIR / name, r.mask)
            for c, v in zip(IMAGE_COLUMNS, (path, name, w, h, r.prob, pixels,
                                            pixels / float(h * w), x, y, bw, bh)):
                rows[c].append(v)
            rep.add(1)
    finally:
        rep.flush()
    fmt = o.get("table", "parquet")
    table = table_name("table", fmt)
    write_table(staging / table, IMAGE_COLUMNS, rows, fmt)
    # masks go to the folder's masks/ now (each file complete; a rerun rewrites the same ones)
    masks_out = Path(unit["folder_out"]) / MASKS_DIR
    masks_out.mkdir(parents=True, exist_ok=True)
    for name in rows["mask"]:
        os.replace(staging / MASKS_DIR / name, masks_out / name)
    with contextlib.suppress(OSError):
        (staging / MASKS_DIR).rmdir()
    return {"frames": len(rows["path"]), "failed_files": failed, "outputs": {"table": table}}


def merge_image_tables(folder_out: Path, n_parts: int, fmt: str, parts_dir: str) -> Path:
    """The folder's one table from its chunks' tables, atomically; returns its path."""
    parts = [folder_out / parts_dir / f"{k:05d}" / table_name("table", fmt) for k in range(n_parts)]
    target = folder_out / table_name("images", fmt)
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        t = pa.concat_tables([pq.read_table(str(p)) for p in parts])
        with atomic_path(target) as tmp:
            pq.write_table(t, str(tmp))
        return target
    with atomic_path(target) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as out:
            for k, p in enumerate(parts):
                with open(p, newline="", encoding="utf-8") as fh:
                    lines = fh.readlines()
                out.writelines(lines if k == 0 else lines[1:])
    return target
