"""``rtseg stream --headless`` at 384 x 288 and at 1920 x 1080, against the segmenter alone
(``rtseg bench``), for this checkout and, interleaved in the same run, an older one.

Used by ``benchmarks/stream.py --sizes``. Both clips are built from the CVC-ClinicDB frames in
sequence order into a temporary folder (never the repository): 384 x 288 at 25 fps, and the same
frames scaled to 1080 rows and centred in 1920 x 1080 black frames (the black side margins of a
16:9 endoscopy feed) at 60 fps. Each repetition runs, for each checkout in turn, ``rtseg stream``
on both clips and ``rtseg bench --no-baseline`` (batch 1) as subprocesses with that checkout
first on ``PYTHONPATH``, and records the load average before each. A checkout whose ``rtseg
bench`` has no 1080p row is compared with the ``in-graph resize`` row of this checkout's bench
in the same repetition (the same segmenter fed the way that code fed it).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from rtseg.errors import UserError

HD = (1920, 1080)


def build_clips(data_dir: Path, folder: Path, frames: list[Path]) -> dict[str, Path]:
    small, hd = folder / "cvc_384x288.mp4", folder / "cvc_1920x1080.mp4"
    w_view = round(384 * HD[1] / 288)
    x0 = (HD[0] - w_view) // 2
    ws = cv2.VideoWriter(str(small), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (384, 288))
    wh = cv2.VideoWriter(str(hd), cv2.VideoWriter_fourcc(*"mp4v"), 60.0, HD)
    try:
        for path in frames:
            img = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if img is None:
                continue
            img = cv2.resize(img, (384, 288), interpolation=cv2.INTER_AREA) \
                if img.shape[:2] != (288, 384) else img
            ws.write(img)
            big = np.zeros((HD[1], HD[0], 3), np.uint8)
            big[:, x0:x0 + w_view] = cv2.resize(img, (w_view, HD[1]), interpolation=cv2.INTER_CUBIC)
            wh.write(big)
    finally:
        ws.release()
        wh.release()
    return {"384x288": small, "1920x1080": hd}


def _rtseg(root: Path, args: list[str], timeout: float = 900) -> None:
    env = {**os.environ, "PYTHONPATH": str(root)}
    r = subprocess.run([sys.executable, "-m", "rtseg", *args], cwd=root, env=env,
                       capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise UserError(f"rtseg {args[0]} in {root} failed: {(r.stderr or r.stdout).strip()[-400:]}")


def one_rep(root: Path, clips: dict, tmp: Path, backend: str, frames: int, tag: str) -> dict:
    out: dict = {"load_avg": os.getloadavg()}
    for size, clip in clips.items():
        js = tmp / f"{tag}-stream-{size}.json"
        _rtseg(root, ["stream", "--source", str(clip), "--headless", "--backend", backend,
                      "--max-frames", str(frames), "--log-every", "0", "--json", str(js)])
        s = json.loads(js.read_text())
        out[size] = {"e2e_fps": s["table2"]["Av-fps"], "dropped": s["frames_dropped"],
                     "processed": s["frames_processed"],
                     "p95_ms": (s.get("latency_ms") or {}).get("p95"),
                     "median_latency_ms": (s.get("latency_ms") or {}).get("median"),
                     "stages_ms": {k: v["median"] for k, v in s["stages_ms"].items()}}
    js = tmp / f"{tag}-bench.json"
    _rtseg(root, ["bench", "--backend", backend, "--batch", "1", "--frames", str(frames),
                  "--no-baseline", "--json", str(js)])
    rows = json.loads(js.read_text())["rows"]
    out["bench"] = {r["label"]: r["Av-fps"] for r in rows}
    return out


def seg_alone(rep: dict, new_rep: dict, backend: str, size: str) -> float | None:
    """The segmenter-alone fps for ``size`` from ``rep``'s bench (else this checkout's
    in-graph resize row of the same repetition)."""
    b = rep["bench"]
    if size == "384x288":
        return next((v for k, v in b.items() if k == f"{backend} b1"), None)
    return b.get(f"{backend} b1 {size}") or new_rep["bench"].get(f"{backend} b1 {size} in-graph resize")


def run_sizes(args, frames: list[Path], console) -> dict:
    roots = {"new": Path(__file__).resolve().parent.parent}
    if args.old_root:
        roots = {"old": Path(args.old_root).resolve(), **roots}
    backend = "onnxruntime" if args.backend == "auto" else args.backend
    reps: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="rtseg-sizes-", dir="/tmp") as tmp:
        clips = build_clips(Path(args.data_dir), Path(tmp), frames)
        n = args.frames or len(frames)
        for i in range(args.reps):
            rep = {}
            for name, root in roots.items():  # interleaved: old, new, old, new, ...
                console.print(f"rep {i + 1}/{args.reps}: {name} ({root}) ...", markup=False)
                rep[name] = one_rep(root, clips, Path(tmp), backend, n, f"{name}{i}")
            reps.append(rep)
    return summarise(reps, roots, backend, console)


def summarise(reps: list[dict], roots: dict, backend: str, console) -> dict:
    from rich.table import Table

    t = Table(title=f"rtseg stream --headless ({backend}, batch 1) vs the segmenter alone "
                    f"(rtseg bench), {len(reps)} interleaved repetitions: median [min, max]")
    for c in ("code", "clip", "end-to-end fps", "segmenter fps", "ratio", "dropped", "p95 latency ms"):
        t.add_column(c, justify="left" if c in ("code", "clip") else "right")
    table = {}
    for name in roots:
        for size in ("384x288", "1920x1080"):
            e2e = [r[name][size]["e2e_fps"] for r in reps]
            seg = [seg_alone(r[name], r["new"], backend, size) for r in reps]
            ratio = [a / b for a, b in zip(e2e, seg) if b]
            p95 = [r[name][size]["p95_ms"] for r in reps if r[name][size]["p95_ms"] is not None]
            row = {"e2e_fps": _mm(e2e), "segmenter_fps": _mm([s for s in seg if s]),
                   "ratio": _mm(ratio), "dropped": [r[name][size]["dropped"] for r in reps],
                   "p95_latency_ms": _mm(p95) if p95 else None,
                   "stages_median_ms": [r[name][size]["stages_ms"] for r in reps]}
            table[f"{name} {size}"] = row
            t.add_row(name, size, _fmt(row["e2e_fps"]), _fmt(row["segmenter_fps"]),
                      _fmt(row["ratio"], 2), str(max(row["dropped"])), _fmt(row["p95_latency_ms"]))
    console.print(t)
    loads = [r[n]["load_avg"][0] for r in reps for n in roots]
    console.print(f"load average (1 min) before each run: {', '.join(f'{x:.2f}' for x in loads)}",
                  markup=False)
    return {"roots": {k: str(v) for k, v in roots.items()}, "backend": backend, "reps": reps,
            "summary": table}


def _mm(xs: list[float]) -> dict | None:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)} if xs else None


def _fmt(m: dict | None, d: int = 1) -> str:
    return "-" if not m else f"{m['median']:.{d}f} [{m['min']:.{d}f}, {m['max']:.{d}f}]"
