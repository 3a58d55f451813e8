"""Benchmark label propagation (stage 1) on real data with known labels.

    python benchmarks/propagate.py ../shared/data [--json propagate.json] [--target 1000]

DATA_DIR holds ``kvasir-seg/images+masks`` (polyp), ``cvc-clinicdb/images`` (polyp) and
``non-polyp/`` (crops). Nothing is copied: the timing run links the images from a temporary
folder outside the repository.

1. Whole images: pool = Kvasir-SEG + CVC-ClinicDB (polyp) + non-polyp crops; 100 + 100 random
   seeds, the rest unlabeled. Accuracy of the propagated labels for 50/200/250 clusters, with
   ``--scale standard`` and ``none``, at ``--target`` and when labeling everything, averaged
   over ``--draws`` random seed sets. Caveat (data README): the non-polyp crops have no black
   endoscope border; the "border rule" row shows how far a trivial dark-corner test already
   separates the two classes.
2. Tiles (the paper's Run 1): the 2x2 tiles of the Kvasir-SEG images; polyp tile = any mask
   pixel, negative = in-domain tile without mask pixels; 100 + 100 seed tiles. "tiles_clean":
   the same with polyp = mask fraction above ``--clean-fraction`` (0.25), tiles holding a
   smaller, non-zero fraction left out.
3. Timing: ``rtseg propagate`` (subprocess) on the whole pool (~3100 images), cold feature
   cache (fresh RTSEG_CACHE_DIR), then warm.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from rich.console import Console
from rich.table import Table

from rtseg.atomic import write_json
from rtseg.imageio import list_images, read_mask
from rtseg.propagate.files import image_features, tile_features, split_tiles, tile_labels_from_mask
from rtseg.propagate.kmeans import NON_POLYP, POLYP, UNLABELED, propagate

CLUSTERS = (50, 200, 250)
SCALES = ("standard", "none")


def pool_whole(data: Path):
    pos = list_images(data / "kvasir-seg" / "images") + list_images(data / "cvc-clinicdb" / "images")
    neg = list_images(data / "non-polyp")
    return pos + neg, np.array([POLYP] * len(pos) + [NON_POLYP] * len(neg))


def pool_tiles(data: Path):
    """Kvasir-SEG images, tile labels (any mask pixel = polyp) and tile mask fractions."""
    imgs = list_images(data / "kvasir-seg" / "images")
    masks = {m.stem: m for m in list_images(data / "kvasir-seg" / "masks")}
    labels, fractions = [], []
    for p in imgs:
        m = read_mask(masks[p.stem])
        labels += tile_labels_from_mask(m)
        fractions += [float(t.mean()) for t in split_tiles(m)]
    return imgs, np.array(labels), np.array(fractions)


def draw_seeds(truth: np.ndarray, n_per_class: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y = np.full(len(truth), UNLABELED)
    for c in (POLYP, NON_POLYP):
        idx = rng.choice(np.flatnonzero(truth == c), n_per_class, replace=False)
        y[idx] = c
    return y


def grid(x, truth, args, purity=0.5, clusters=CLUSTERS, scales=SCALES, label_all=True):
    rows = []
    for k in clusters:
        for scale in scales:
            targets = (("target", args.target), ("all", len(truth))) if label_all else (("target", args.target),)
            for tname, target in targets:
                accs, baccs, nprop, t_s, stops, rounds = [], [], [], [], [], []
                for d in range(args.draws):
                    y = draw_seeds(truth, 100, d)
                    t0 = time.perf_counter()
                    r = propagate(x, y, n_clusters=k, target=target, purity=purity, scale=scale)
                    t_s.append(time.perf_counter() - t0)
                    m = r.source == "propagated"
                    accs.append(float((r.labels[m] == truth[m]).mean()) if m.any() else float("nan"))
                    rec = [float((r.labels[m & (truth == c)] == c).mean()) if (m & (truth == c)).any()
                           else float("nan") for c in (POLYP, NON_POLYP)]
                    baccs.append(float(np.mean(rec)))
                    nprop.append(int(m.sum()))
                    stops.append(r.stop_reason)
                    rounds.append(len(r.rounds))
                rows.append({"clusters": k, "scale": scale, "purity": purity, "target": tname,
                             "target_n": target, "accuracy_mean": float(np.mean(accs)),
                             "accuracy_min": float(np.min(accs)), "accuracy_max": float(np.max(accs)),
                             "accuracy_per_draw": accs, "balanced_accuracy_mean": float(np.mean(baccs)),
                             "propagated_mean": float(np.mean(nprop)),
                             "rounds_mean": float(np.mean(rounds)), "stop_reasons": sorted(set(stops)),
                             "seconds_mean": float(np.mean(t_s))})
    return rows


def border_rule_accuracy(paths, truth) -> float:
    """Accuracy of 'dark corners = polyp' (the trivial cue of the whole-image task)."""
    pred = []
    for p in paths:
        g = cv2.imread(str(p), cv2.IMREAD_REDUCED_GRAYSCALE_4)
        h, w = g.shape
        c = max(1, min(h, w) // 10)
        corners = [g[:c, :c], g[:c, -c:], g[-c:, :c], g[-c:, -c:]]
        pred.append(POLYP if np.mean([k.mean() for k in corners]) < 30 else NON_POLYP)
    return float((np.array(pred) == truth).mean())


def time_cli(paths, truth, args, console) -> dict:
    with tempfile.TemporaryDirectory(prefix="rtseg-bench-prop-") as tmp:
        return _time_cli(Path(tmp), paths, truth, args, console)


def _time_cli(work: Path, paths, truth, args, console) -> dict:
    y = draw_seeds(truth, 100, 0)
    rows = []
    for i, (p, t, s) in enumerate(zip(paths, truth, y)):
        name = f"{i:05d}_{p.name}"
        if s == UNLABELED:
            link = work / "unlabeled" / name
            rows.append((str(link), "polyp" if t == POLYP else "non_polyp"))
        else:
            link = work / "labeled" / ("polyp" if s == POLYP else "non_polyp") / name
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(p.resolve(), link)
    with open(work / "truth.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("path", "label"), *rows])
    env = {**os.environ, "RTSEG_CACHE_DIR": str(work / "cache"), "COLUMNS": "120"}
    out = {"images": len(paths)}
    for run in ("cold", "warm"):
        cmd = [sys.executable, "-m", "rtseg", "propagate", "--labeled", str(work / "labeled"),
               "--unlabeled", str(work / "unlabeled"), "--clusters", "200", "--target", str(args.target),
               "--out", str(work / "labels.csv"), "--truth", str(work / "truth.csv"),
               "--json", str(work / f"{run}.json")]
        console.print(f"[dim]{run}: {' '.join(cmd)}[/dim]")
        t0 = time.perf_counter()
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if r.returncode != 0:
            raise SystemExit(f"rtseg propagate failed ({r.returncode}): {r.stderr.strip()}")
        import json

        rep = json.loads((work / f"{run}.json").read_text())
        out[run] = {"wall_s": round(wall, 2), "timing_s": rep["timing_s"],
                    "accuracy": rep["truth"]["accuracy"] if rep.get("truth") else None,
                    "propagated": rep["propagated"]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", type=Path, help="data folder, e.g. ../shared/data")
    ap.add_argument("--json", type=Path, default=None, help="write the results here (atomically)")
    ap.add_argument("--target", type=int, default=1000)
    ap.add_argument("--draws", type=int, default=3, help="random seed sets per setting")
    ap.add_argument("--clean-fraction", type=float, default=0.25,
                    help="tiles_clean: polyp tiles hold more than this fraction of mask pixels")
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--skip-tiles", action="store_true")
    args = ap.parse_args()
    console = Console(width=max(130, Console().width))
    res: dict = {"data": str(args.data), "target": args.target, "draws": args.draws}

    # whole images
    paths, truth = pool_whole(args.data)
    t0 = time.perf_counter()
    x, ok, skipped = image_features(paths, use_cache=True, progress=True)
    assert not skipped and len(ok) == len(paths)
    res["whole"] = {"n": len(paths), "polyp": int((truth == POLYP).sum()),
                    "non_polyp": int((truth == NON_POLYP).sum()),
                    "features_s": round(time.perf_counter() - t0, 2),
                    "border_rule_accuracy": border_rule_accuracy(paths, truth),
                    "grid": grid(x, truth, args)}
    res["whole"]["purity"] = grid(x, truth, args, purity=0.8, clusters=(200,))
    # tiles
    if not args.skip_tiles:
        tpaths, ttruth, tfrac = pool_tiles(args.data)
        t0 = time.perf_counter()
        tx, tok, tskipped = tile_features(tpaths, use_cache=True, progress=True)
        assert not tskipped
        tx = tx.reshape(-1, tx.shape[-1])
        res["tiles"] = {"n": len(ttruth), "polyp": int((ttruth == POLYP).sum()),
                        "non_polyp": int((ttruth == NON_POLYP).sum()),
                        "features_s": round(time.perf_counter() - t0, 2),
                        "grid": grid(tx, ttruth, args)}
        res["tiles"]["purity"] = grid(tx, ttruth, args, purity=0.8, clusters=(200,))
        # cleaner task: polyp tiles hold > --clean-fraction of mask pixels, negatives none,
        # tiles in between dropped
        keep = (tfrac == 0) | (tfrac > args.clean_fraction)
        ctruth = (tfrac[keep] > args.clean_fraction).astype(int) * POLYP + \
            (tfrac[keep] <= args.clean_fraction).astype(int) * NON_POLYP
        res["tiles_clean"] = {"n": int(keep.sum()), "polyp": int((ctruth == POLYP).sum()),
                              "non_polyp": int((ctruth == NON_POLYP).sum()),
                              "clean_fraction": args.clean_fraction,
                              "grid": grid(tx[keep], ctruth, args, label_all=False), "purity": []}
    if not args.skip_timing:
        res["timing"] = time_cli(paths, truth, args, console)

    # report
    for mode in ("whole", "tiles", "tiles_clean"):
        if mode not in res:
            continue
        r = res[mode]
        what = {"whole": "whole images", "tiles": "Kvasir-SEG tiles, polyp = any mask pixel",
                "tiles_clean": f"Kvasir-SEG tiles, polyp = mask fraction > {args.clean_fraction}, "
                               f"negative = no mask pixel"}[mode]
        tab = Table(title=f"{what}: {r['n']} ({r['polyp']} polyp / {r['non_polyp']} non_polyp), "
                          f"100+100 seeds; propagated-label accuracy, mean \\[min-max] of {args.draws} seed draws")
        for col in ("k", "scale", "purity", "target", "accuracy", "bal. acc", "propagated", "rounds",
                    "stop", "s"):
            tab.add_column(col, justify="right")
        for g in r["grid"] + r["purity"]:
            tab.add_row(str(g["clusters"]), g["scale"], f"{g['purity']}", str(g["target_n"]),
                        f"{g['accuracy_mean']:.4f} [{g['accuracy_min']:.3f}-{g['accuracy_max']:.3f}]",
                        f"{g['balanced_accuracy_mean']:.4f}",
                        f"{g['propagated_mean']:.0f}", f"{g['rounds_mean']:.1f}",
                        ",".join(g["stop_reasons"]), f"{g['seconds_mean']:.2f}")
        console.print(tab)
        if mode == "whole":
            console.print(f"border rule (dark corners = polyp) accuracy on the whole pool: "
                          f"{r['border_rule_accuracy']:.4f}")
    if "timing" in res:
        t = res["timing"]
        tab = Table(title=f"rtseg propagate on {t['images']} images (k=200, target {args.target})")
        for col in ("cache", "wall s", "features s", "propagation s", "accuracy", "propagated"):
            tab.add_column(col, justify="right")
        for run in ("cold", "warm"):
            v = t[run]
            tab.add_row(run, f"{v['wall_s']:.1f}", f"{v['timing_s']['features']:.1f}",
                        f"{v['timing_s']['propagation']:.2f}",
                        "-" if v["accuracy"] is None else f"{v['accuracy']:.4f}", str(v["propagated"]))
        console.print(tab)
    if args.json:
        write_json(args.json, res)
        console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
