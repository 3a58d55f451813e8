"""Benchmark the global features (rtseg.features): images per second, decode included.

    python benchmarks/features.py ../shared/data/kvasir-seg/images [--limit N] [--json OUT.json]
                                  [--no-cache] [--workers W] [--repeat R]

1. Latency: each image read (``rtseg.imageio``) and extracted one after the other on one
   thread; median / min / max ms per image, split into decode and features.
2. Throughput: ``extract_paths`` end to end (decode + features, ``--workers`` threads, no
   cache), best of ``--repeat`` runs, and with 1 worker.
3. Unless ``--no-cache``: ``extract_paths`` with a fresh cache in a temporary folder, cold
   (computes and saves) then warm (every file a hit).

Nothing is copied from DIR; the cache file lives in a temporary folder that is removed.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from rich.console import Console
from rich.table import Table

from rtseg.atomic import write_json
from rtseg.errors import UserError
from rtseg.features import DEFAULT_WORKERS, FEATURES_VERSION, extract_one, extract_paths
from rtseg.features.cache import FeatureCache
from rtseg.imageio import list_images, read_image


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "usable_cores": usable,
            "load_avg_1_5_15": load, "opencv_threads": cv2.getNumThreads(),
            "python": platform.python_version(), "numpy": np.__version__,
            "opencv": cv2.__version__, "platform": platform.platform()}


def latency(paths: list[Path]) -> dict:
    decode_ms, feat_ms, total_ms = [], [], []
    sizes = []
    c0 = time.process_time()
    for p in paths:
        t0 = time.perf_counter()
        img = read_image(p)
        t1 = time.perf_counter()
        extract_one(img)
        t2 = time.perf_counter()
        decode_ms.append((t1 - t0) * 1e3)
        feat_ms.append((t2 - t1) * 1e3)
        total_ms.append((t2 - t0) * 1e3)
        sizes.append(img.shape[0] * img.shape[1])

    def stats(v):
        return {"median": statistics.median(v), "min": min(v), "max": max(v), "mean": statistics.fmean(v)}

    cpu_ms = 1e3 * (time.process_time() - c0) / len(paths)
    return {"decode_ms": stats(decode_ms), "features_ms": stats(feat_ms), "total_ms": stats(total_ms),
            "cpu_ms_per_image": cpu_ms,
            "images_per_s_1_thread": len(paths) / (sum(total_ms) / 1e3),
            "megapixels_median": statistics.median(sizes) / 1e6}


def throughput(paths: list[Path], workers: int, repeat: int, cache_factory=None) -> dict:
    runs, cpu = [], []
    for _ in range(repeat):
        cache = cache_factory() if cache_factory else None
        t0, c0 = time.perf_counter(), time.process_time()
        x, ok, skipped = extract_paths(paths, cache=cache, workers=workers)
        runs.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    best = min(runs)
    return {"workers": workers, "seconds": runs, "best_s": best, "images": len(ok),
            "skipped": len(skipped), "images_per_s": len(ok) / best,
            "cpu_ms_per_image": 1e3 * min(cpu) / max(1, len(ok))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", type=Path, help="folder of images, e.g. ../shared/data/kvasir-seg/images")
    ap.add_argument("--limit", type=int, default=None, help="only the first N images (natural order)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here (atomically)")
    ap.add_argument("--no-cache", action="store_true", help="skip the cold/warm cache runs")
    ap.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                    help=f"threads for extract_paths (default {DEFAULT_WORKERS})")
    ap.add_argument("--repeat", type=int, default=2, help="throughput runs (best is reported)")
    args = ap.parse_args()
    console = Console()
    try:
        paths = list_images(args.dir)
    except UserError as exc:
        console.print(f"error: {exc}")
        sys.exit(2)
    if args.limit is not None:
        paths = paths[: max(1, args.limit)]

    info = machine_info()
    res: dict = {"dir": str(args.dir), "images": len(paths), "features_version": FEATURES_VERSION,
                 "machine": info}
    console.print(f"[dim]{len(paths)} images from {args.dir}; warm-up...[/dim]")
    extract_paths(paths[: min(10, len(paths))], workers=1)  # imports, LUTs, page cache

    res["latency"] = latency(paths)
    res["throughput"] = throughput(paths, args.workers, args.repeat)
    res["throughput_1_worker"] = (throughput(paths, 1, args.repeat) if args.workers != 1
                                  else res["throughput"])
    if not args.no_cache:
        with tempfile.TemporaryDirectory(prefix="rtseg-bench-features-") as tmp:
            cache_file = Path(tmp) / "features.npz"
            res["cache_cold"] = throughput(paths, args.workers, 1, lambda: FeatureCache(cache_file))
            res["cache_warm"] = throughput(paths, args.workers, args.repeat,
                                           lambda: FeatureCache(cache_file))
            res["cache_file_bytes"] = cache_file.stat().st_size

    lat = res["latency"]
    table = Table(title=f"rtseg.features on {len(paths)} images ({args.dir}), "
                        f"median {lat['megapixels_median']:.2f} MP")
    for col in ("measure", "median ms", "min ms", "max ms", "CPU ms/img", "images/s"):
        table.add_column(col, justify="right" if col != "measure" else "left")
    for key, label in (("decode_ms", "decode, 1 thread"), ("features_ms", "features, 1 thread"),
                       ("total_ms", "decode+features, 1 thread")):
        s = lat[key]
        ips = f"{lat['images_per_s_1_thread']:.1f}" if key == "total_ms" else ""
        cpu = f"{lat['cpu_ms_per_image']:.2f}" if key == "total_ms" else ""
        table.add_row(label, f"{s['median']:.2f}", f"{s['min']:.2f}", f"{s['max']:.2f}", cpu, ips)
    rows = [("throughput", f"extract_paths, {args.workers} workers"),
            ("throughput_1_worker", "extract_paths, 1 worker")]
    if args.workers == 1:
        rows = rows[:1]
    if not args.no_cache:
        rows += [("cache_cold", f"{args.workers} workers, cold cache+save"),
                 ("cache_warm", f"{args.workers} workers, warm cache")]
    for key, label in rows:
        r = res[key]
        per = 1e3 * r["best_s"] / max(1, r["images"])
        table.add_row(label, f"{per:.2f} (mean)", "", "", f"{r['cpu_ms_per_image']:.2f}",
                      f"{r['images_per_s']:.1f}")
    table.caption = ("extract_paths rows: wall time / images (decode included), best of --repeat; "
                     "CPU ms/img: process CPU time (all threads) per image")
    console.print(table)
    load = info["load_avg_1_5_15"]
    console.print(f"machine: {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable), "
                  f"load {load}, OpenCV {info['opencv']} ({info['opencv_threads']} threads), "
                  f"numpy {info['numpy']}, Python {info['python']}")
    if args.json:
        write_json(args.json, res)
        console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
