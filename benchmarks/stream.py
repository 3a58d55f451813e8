"""End-to-end speed and memory of ``rtseg stream --headless`` on a real colonoscopy clip.

Builds a 384 x 288, 25 fps mp4 (in a temporary folder, never in the repository) from the
CVC-ClinicDB frames in DATA_DIR (``cvc-clinicdb/sequences.csv``: sequences in order, the frames
of each sequence in frame order), runs the stream loop on it in-process (decode -> segmenter ->
overlay, headless, no video written), and reports:

- end-to-end frame times and fps in the layout of the paper's Table 2, with per-stage times;
- resident memory (VmRSS from /proc/self/status) over a long run (``--long N`` frames, the clip
  looped): growth from the first frame to the end, and from frame 1000 on (after allocator
  warm-up). Target: < 50 MB over 10,000 frames.

With ``--sizes`` it instead times ``rtseg stream --headless`` on a 384 x 288 and a 1920 x 1080
clip of the same frames against the segmenter alone (``rtseg bench``), this checkout and
``--old-root`` interleaved (:mod:`stream_sizes`).

Example::

    python benchmarks/stream.py ../shared/data --frames 428 --long 10000 --json stream_bench.json
    python benchmarks/stream.py ../shared/data --sizes --old-root /tmp/old-main --reps 3 \
        --backend onnxruntime --json sizes.json
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2

from rtseg.atomic import atomic_path
from rtseg.errors import UserError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cvc_frames  # noqa: E402

CLIP_WH = (384, 288)
CLIP_FPS = 25.0
TARGET_FPS = 25.0
TARGET_RSS_MB = 50.0


def rss_mb() -> float:
    """Resident set size of this process in MB (VmRSS, Linux)."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def build_clip(data_dir: Path, out: Path) -> int:
    """Write the CVC-ClinicDB sequences as one mp4; returns the number of frames."""
    vw = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), CLIP_FPS, CLIP_WH)
    if not vw.isOpened():
        raise UserError(f"OpenCV cannot write {out}")
    n = 0
    try:
        for _, path in cvc_frames(data_dir):
            img = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if img is None:
                continue
            if (img.shape[1], img.shape[0]) != CLIP_WH:
                img = cv2.resize(img, CLIP_WH, interpolation=cv2.INTER_AREA)
            vw.write(img)
            n += 1
    finally:
        vw.release()
    if not n:
        raise UserError(f"no readable frame in {data_dir / 'cvc-clinicdb'}")
    return n


def clip_info(clip: Path) -> tuple[int, tuple[int, int]]:
    """(frames, (width, height)) of a prebuilt clip (e.g. carried to a GPU machine), opened the
    way the stream loop opens it (:func:`rtseg.live.capture.open_source`: same checks, same
    one-line errors)."""
    from rtseg.live.capture import open_source

    src = open_source(str(clip))
    try:
        n, hw = src.info.frame_count, src.info.size
    finally:
        src.close()
    if not n or not hw:
        raise UserError(f"{clip} declares no frames")
    return n, (hw[1], hw[0])


def run(args: argparse.Namespace) -> dict:
    from rich.console import Console
    from rich.table import Table

    from rtseg.atomic import ensure_parent, write_json
    from rtseg.live.stats import TABLE2_FIELDS
    from rtseg.live.loop import StreamConfig, run_stream
    from rtseg.runtime.loader import load_segmenter

    console = Console(highlight=False, width=None if sys.stdout.isatty() else 140)
    if args.json:
        ensure_parent(args.json)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    clip_wh = CLIP_WH
    with tempfile.TemporaryDirectory(prefix="rtseg-bench-") as tmp:
        if args.clip:
            clip = Path(args.clip)
            n_clip, clip_wh = clip_info(clip)
            console.print(f"clip: {clip} ({n_clip} frames, {clip_wh[0]}x{clip_wh[1]})", markup=False)
        else:
            clip = Path(tmp) / "cvc_clinicdb_clip.mp4"
            t0 = time.perf_counter()
            n_clip = build_clip(Path(args.data_dir), clip)
            console.print(f"clip: {n_clip} CVC-ClinicDB frames, {CLIP_WH[0]}x{CLIP_WH[1]} @ "
                          f"{CLIP_FPS:g} fps (built in {time.perf_counter() - t0:.1f} s)")
            if args.save_clip:
                ensure_parent(args.save_clip)
                with atomic_path(args.save_clip) as tmp_clip:
                    shutil.copyfile(clip, tmp_clip)
                console.print(f"clip saved to {args.save_clip}", markup=False)
                if args.clip_only:
                    return {"clip": str(args.save_clip), "clip_frames": n_clip}
        seg = load_segmenter(args.model, args.backend, args.device,
                             say=lambda m: console.print(m, markup=False), threads=args.threads)
        console.print(f"segmenter: {seg.describe()}, input {seg.manifest.input_size}", markup=False)

        def stream(n_frames: int, sampler=None) -> dict:
            cfg = StreamConfig(source=str(clip), headless=True, max_frames=n_frames, loop=True,
                               batch=args.batch, quiet=True, log_every=0)
            return run_stream(cfg, segmenter=seg, on_frame=sampler).stats

        runs = {}
        frames = args.frames or n_clip
        console.print(f"timing {frames} frames ...")
        runs["fps"] = stream(frames)
        mem = None
        if args.long:
            samples: list[tuple[int, float]] = []  # a few hundred points at most
            every = max(1, args.long // 200)
            next_at = [1]

            def sampler(n: int) -> None:
                if n >= next_at[0]:
                    samples.append((n, rss_mb()))
                    next_at[0] = n + every

            console.print(f"memory run: {args.long} frames (clip looped) ...")
            t0 = time.perf_counter()
            runs["long"] = stream(args.long, sampler)
            samples.append((runs["long"]["frames_processed"], rss_mb()))
            first = samples[0][1]
            after = next((r for n, r in samples if n >= 1000), first)
            mem = {"frames": runs["long"]["frames_processed"], "rss_first_mb": first,
                   "rss_at_1000_mb": after, "rss_end_mb": samples[-1][1],
                   "rss_max_mb": max(r for _, r in samples),
                   "growth_mb": samples[-1][1] - first, "growth_after_1000_mb": samples[-1][1] - after,
                   "seconds": time.perf_counter() - t0, "samples": samples}

    t = Table(title=f"rtseg stream end to end on CVC-ClinicDB ({clip_wh[0]}x{clip_wh[1]}), "
              "Table 2 layout, times in ms per frame")
    t.add_column("run", no_wrap=True)
    for k in TABLE2_FIELDS:
        t.add_column(k, justify="right")
    t.add_column("Med-fps", justify="right")
    for name, r in runs.items():
        t2 = r["table2"]
        t.add_row(f"{r['backend']} ({r['device']}) {name} {r['frames_processed']} fr",
                  *(f"{t2[k]:.2f}" for k in TABLE2_FIELDS), f"{t2['Med-fps']:.2f}")
    console.print(t)
    st = Table(title="per-stage times per frame [ms] (fps run; decode runs in its own thread)")
    for c in ("stage", "avg", "median", "min", "max"):
        st.add_column(c, justify="left" if c == "stage" else "right")
    for k, v in runs["fps"]["stages_ms"].items():
        st.add_row(k, *(f"{v[c]:.2f}" for c in ("avg", "median", "min", "max")))
    console.print(st)
    av = runs["fps"]["table2"]["Av-fps"]
    console.print(f"end-to-end Av-fps {av:.2f} (target >= {TARGET_FPS:g}: "
                  f"{'met' if av >= TARGET_FPS else 'NOT met'}); backend {seg.name}, "
                  f"input {seg.manifest.input_size}, batch {args.batch}", markup=False)
    if mem:
        ok = mem["growth_mb"] < TARGET_RSS_MB
        console.print(f"RSS over {mem['frames']} frames: {mem['rss_first_mb']:.1f} -> "
                      f"{mem['rss_end_mb']:.1f} MB (max {mem['rss_max_mb']:.1f}); growth "
                      f"{mem['growth_mb']:+.1f} MB, {mem['growth_after_1000_mb']:+.1f} MB after "
                      f"frame 1000 (target < {TARGET_RSS_MB:g} MB: {'met' if ok else 'NOT met'})",
                      markup=False)
    import torch

    result = {"data_dir": args.data_dir, "clip": args.clip, "clip_frames": n_clip, "clip_size": list(clip_wh),
              "backend": seg.name, "device": seg.device, "input_size": seg.manifest.input_size,
              "batch": args.batch,
              "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
              "runs": runs, "memory": mem,
              "targets": {"fps": TARGET_FPS, "rss_growth_mb": TARGET_RSS_MB}}
    if args.json:
        write_json(args.json, result)
        console.print(f"wrote {args.json}", markup=False)
    return result


def _sizes(args: argparse.Namespace) -> int:
    from rich.console import Console

    from rtseg.atomic import ensure_parent, write_json
    from stream_sizes import run_sizes

    console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
    try:
        if args.json:
            ensure_parent(args.json)
        frames = [p for _, p in cvc_frames(Path(args.data_dir))]
        result = run_sizes(args, frames, console)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        write_json(args.json, result)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="example: python benchmarks/stream.py ../shared/data "
                                 "--long 10000 --json stream_bench.json")
    ap.add_argument("data_dir", nargs="?", default=None,
                    help="data folder holding cvc-clinicdb/ (e.g. ../shared/data); not needed "
                         "with --clip")
    ap.add_argument("--clip", default=None,
                    help="use this prebuilt clip instead of building one from DATA_DIR")
    ap.add_argument("--save-clip", default=None,
                    help="also keep the clip built from DATA_DIR here (to carry it elsewhere)")
    ap.add_argument("--clip-only", action="store_true",
                    help="with --save-clip: build and save the clip, time nothing")
    ap.add_argument("--model", default=None, help="bundle folder, .onnx or .engine (default: shipped)")
    ap.add_argument("--backend", default="auto", help="auto, torch, onnxruntime or tensorrt")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--frames", type=int, default=0, help="frames for the fps run (default: the clip)")
    ap.add_argument("--long", type=int, default=0, help="frames for the memory run (e.g. 10000)")
    ap.add_argument("--threads", type=int, default=0,
                    help="CPU threads: torch intra-op and the segmenter's (0: default)")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--sizes", action="store_true",
                    help="384x288 and 1920x1080 clips vs the segmenter alone (see the doc)")
    ap.add_argument("--old-root", default=None,
                    help="with --sizes: also time this older checkout, interleaved")
    ap.add_argument("--reps", type=int, default=3, help="with --sizes: repetitions")
    args = ap.parse_args(argv)
    if args.sizes:
        if not args.data_dir:
            ap.error("--sizes needs DATA_DIR")
        return _sizes(args)
    if not args.clip and not args.data_dir:
        ap.error("give DATA_DIR (to build the clip) or --clip FILE")
    if args.clip_only and not args.save_clip:
        ap.error("--clip-only needs --save-clip FILE")
    try:
        run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
