"""What one frame costs, step by step, at 384 x 288 and at 1920 x 1080: what bounds the live loop.

    python benchmarks/frame_costs.py ../shared/data --frames 120 --json frame_costs.json
    python benchmarks/frame_costs.py --clip video.mp4

Each step of the live loop's path is timed alone, frame after frame, on the first ``--frames``
frames of each clip (after 5 warm-up frames): the decode (the live loop's reader,
``cv2.VideoCapture.read`` of the mp4v clip), the view (active area found, cut and resized to the network input), the graph (the
segmenter on the view: onnxruntime with its default threads), the frame-size mask
(``cam_to_mask``: threshold and clean-up) and the overlay (``Overlay.draw``); onnxruntime's
threads sleep between operators, as in the live loop (their spin-waiting would count as CPU time). Median, min and max
wall milliseconds per step, and its CPU milliseconds (process time: all threads), whose sum over
the steps, against the cores there are, bounds the frame rate of a loop that overlaps them.
With a data folder the clips are the CVC-ClinicDB frames in sequence order, built in a temporary
folder as ``benchmarks/stream.py --sizes`` builds them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from _common import cvc_frames, run_cli

from rtseg.errors import UserError

STEPS = ("decode", "view", "graph", "mask", "overlay")


def time_clip(clip: Path, seg, frames: int) -> dict:
    """Per step: wall ms per frame (median, min, max) and CPU ms per frame (process time)."""
    from rtseg.live.capture import open_source
    from rtseg.live.overlay import Overlay
    from rtseg.model.cam import cam_to_mask

    src = open_source(str(clip))  # the live loop's reader: its checks and one-line errors
    m = seg.manifest
    overlay = Overlay()
    wall: dict[str, list[float]] = {s: [] for s in STEPS}
    cpu = {s: 0.0 for s in STEPS}
    n = size = 0
    try:
        while n < frames + 5:
            t = [time.perf_counter()], [time.process_time()]

            def lap(step: str) -> None:
                if n >= 5:
                    wall[step].append((time.perf_counter() - t[0][0]) * 1e3)
                    cpu[step] += (time.process_time() - t[1][0]) * 1e3
                t[0][0], t[1][0] = time.perf_counter(), time.process_time()

            got = src.read()
            if got.status == "end":
                break
            if got.status != "ok":
                continue
            frame = got.frame
            lap("decode")
            views, boxes = seg.views(frame[None])
            lap("view")
            out = seg.inner(views)
            lap("graph")
            mask = cam_to_mask(out.cam[0], m.threshold, frame.shape[:2], m.postprocess, boxes[0]).view("uint8")
            lap("mask")
            canvas = frame.copy()
            t[0][0], t[1][0] = time.perf_counter(), time.process_time()  # the copy is not the overlay's
            overlay.draw(canvas, mask, None, float(out.prob[0]), 50.0, box=boxes[0])
            lap("overlay")
            size = frame.shape[:2]
            n += 1
    finally:
        src.close()
    done = n - 5
    if done < 1:
        raise UserError(f"{clip} has fewer than 6 frames")
    steps = {s: {"median_ms": statistics.median(wall[s]), "min_ms": min(wall[s]), "max_ms": max(wall[s]),
                 "cpu_ms": cpu[s] / done} for s in STEPS}
    total_cpu = sum(v["cpu_ms"] for v in steps.values())
    cores = os.cpu_count() or 1
    return {"clip": str(clip), "size": f"{size[1]}x{size[0]}", "frames": done, "steps": steps,
            "cpu_ms_per_frame": total_cpu, "cores": cores, "fps_bound": 1e3 * cores / total_cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", nargs="?", type=Path, help="the data folder (CVC-ClinicDB clips are built from it)")
    ap.add_argument("--clip", type=Path, action="append", help="a video to time instead (repeatable)")
    ap.add_argument("--frames", type=int, default=120, help="frames timed per clip")
    ap.add_argument("--model", default=None, help="model bundle or graph (default: the shipped model)")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    if a.frames < 1:
        raise UserError("--frames must be at least 1")
    if not a.clip and a.data is None:
        raise UserError("give the data folder or --clip VIDEO")
    for c in a.clip or []:
        if not c.is_file():
            raise UserError(f"{c} is not a video file" if c.exists() else f"{c} not found")

    from rich.table import Table

    from rtseg.runtime.loader import load_segmenter
    from rtseg.ui import make_console

    console = make_console()
    frames = [p for _, p in cvc_frames(a.data)] if not a.clip else []  # the data folder checked first
    seg = load_segmenter(a.model, "onnxruntime", "cpu", overlapped=True)  # as the live loop runs it
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            clips = a.clip
            if not clips:
                from stream_sizes import build_clips

                clips = list(build_clips(a.data, Path(tmp), frames).values())
            seg.warmup(288, 384)
            for c in clips:
                rows.append(time_clip(Path(c), seg, a.frames))
    finally:
        seg.close()
    from rich.markup import escape

    t = Table(title=escape(f"one frame, step by step ({seg.describe()}; per step: median wall ms [min, max]; CPU ms)"))
    t.add_column("clip")
    for s in STEPS:
        t.add_column(s)
    t.add_column("CPU ms / frame")
    t.add_column(f"bound on {rows[0]['cores']} cores")
    for r in rows:
        t.add_row(r["size"], *[f"{r['steps'][s]['median_ms']:.1f} [{r['steps'][s]['min_ms']:.1f}, "
                               f"{r['steps'][s]['max_ms']:.1f}]; {r['steps'][s]['cpu_ms']:.1f}" for s in STEPS],
                  f"{r['cpu_ms_per_frame']:.1f}", f"{r['fps_bound']:.0f} fps")
    console.print(t)
    console.print(f"load average before: {os.getloadavg()[0]:.1f}")
    if a.json:
        from rtseg.atomic import write_json

        write_json(a.json, {"machine": {"cores": os.cpu_count(), "load_avg": os.getloadavg()}, "clips": rows})


if __name__ == "__main__":
    run_cli(main)
