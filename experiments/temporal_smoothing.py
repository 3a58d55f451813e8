"""Does smoothing across the frames of a video change what the live loop shows?

    python experiments/temporal_smoothing.py --data ../shared/data [--variant V] [--json t.json]

The held-out video sequences of the recipe's leak-free cross-validation (PolypGen polyp-free
sequences, CVC-ClinicDB polyp sequences; a sequence never spans two folds), played in frame order
through the live loop's causal filters (``rtseg.live.smoothing``: ``CallSmoother`` on the frame
probability, mode "call"; and ``CamSmoother`` on the gated map too, mode "call+maps"; one factor
``a`` each, fixed over a grid here, not chosen: 0 = every frame alone) and scored
per frame: polyp-free frames called non-polyp, CVC-ClinicDB frames called polyp, CVC-ClinicDB
full-frame Dice, and how often the call flips from one frame to the next. Single images
(Kvasir-SEG, PolypGen polyp frames) are one-frame clips: the filter leaves them as they are.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from rtseg.atomic import write_text
from rtseg.errors import run_script
from rtseg.evaluate.metrics import image_scores
from rtseg.imageio import read_mask
from rtseg.live.smoothing import CallSmoother, CamSmoother
from rtseg.model.active_area import paste
from rtseg.model.postprocess import refine
from rtseg.model.thresholds import ThresholdPolicy
from rtseg.recipes.layout import group_folds
from rtseg.recipes.distill.call_smoothing import CALL_FACTORS, clips
from rtseg.recipes.distill.data import add_tiles, load_all, open_store, seeds_of
from rtseg.recipes.distill.fit import DEFAULT_VARIANT, fit, maps_of, variant_named


def play(f, store, clip, a: float, maps_too: bool) -> tuple[np.ndarray, np.ndarray, object]:
    """One clip through the loop's filters: (called [N], gated maps [N, S, S], cached); the maps
    smoothed too when ``maps_too``, else the frame's own (shown only where the call says polyp)."""
    c = store.get([str(it.image) for it in clip])
    prob, maps = maps_of(f, c, True, True)  # the graph's outputs: gated map, frame prob
    policy = ThresholdPolicy("above", f.threshold)
    cams = CamSmoother(a, policy)(maps.astype(np.float32), policy.apply(maps))[0] if maps_too else maps
    called = CallSmoother(a)(prob.astype(np.float32))[0] > 0.5
    return called, cams, c


def run_fold(f, store, test, a: float, maps_too: bool) -> dict:
    out = {"pg_neg": {}, "cvc": {"called": [], "dice": []}, "flips": 0, "pairs": 0}
    for clip in clips(test["pg_neg"]):
        g = clip[0].group
        called, _, _ = play(f, store, clip, a, maps_too)
        out["pg_neg"][g] = [int((~called).sum()), len(clip)]
        out["flips"] += int((called[1:] != called[:-1]).sum())
        out["pairs"] += len(clip) - 1
    for clip in clips(test["cvc"]):
        called, cams, c = play(f, store, clip, a, maps_too)
        out["flips"] += int((called[1:] != called[:-1]).sum())
        out["pairs"] += len(clip) - 1
        for it, cam, bx, z in zip(clip, cams, c.boxes, called):
            truth = read_mask(it.mask)
            full = paste(cam.astype(np.float32), bx, truth.shape) > f.threshold
            pred = (refine(full, f.steps) if f.steps else full) if z else np.zeros_like(full)
            out["cvc"]["called"].append(bool(z))
            out["cvc"]["dice"].append(image_scores(pred, truth)["dice"])
    return out


def summarise(per_fold: list[dict]) -> dict:
    seqs = {g: v for r in per_fold for g, v in r["pg_neg"].items()}
    ok = sum(v[0] for v in seqs.values())
    n = sum(v[1] for v in seqs.values())
    called = [z for r in per_fold for z in r["cvc"]["called"]]
    dice = [d for r in per_fold for d in r["cvc"]["dice"]]
    return {"pg_neg_called_non_polyp_all_frames": round(ok / n, 4),
            "pg_neg_by_fold": [round(sum(v[0] for v in r["pg_neg"].values()) /
                                     sum(v[1] for v in r["pg_neg"].values()), 4) for r in per_fold],
            "pg_neg_per_sequence": {g: round(v[0] / v[1], 3) for g, v in sorted(seqs.items())},
            "cvc_called_polyp": round(float(np.mean(called)), 4),
            "cvc_dice": round(float(np.mean(dice)), 4),
            "flips_per_100_frames": round(100 * sum(r["flips"] for r in per_fold) /
                                          max(1, sum(r["pairs"] for r in per_fold)), 2)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--variant", default=DEFAULT_VARIANT)
    p.add_argument("--cache", type=Path, default=Path("runs/lite_features"))
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    v = variant_named(a.variant)
    items = load_all(a.data)
    store = open_store(items, a.cache)
    fold_of = {s: group_folds(i, a.folds) for s, i in items.items()}
    modes = {"call": False, "call+maps": True}  # what the filter smooths
    per: dict[tuple, list[dict]] = {(md, x): [] for md in modes for x in CALL_FACTORS}
    for k in range(a.folds):
        train = {s: [it for j, fl in enumerate(fs) if j != k for it in fl] for s, fs in fold_of.items()}
        test = {s: fs[k] for s, fs in fold_of.items()}
        add_tiles(store, seeds_of(train))
        f = fit(store, train, v, store.m, log=lambda *_: None)
        for md, x in per:
            per[md, x].append(run_fold(f, store, test, x, modes[md]))
        print(f"fold {k}: " + ", ".join(f"{md} a={x}: {summarise(rs[-1:])['pg_neg_called_non_polyp_all_frames']:.3f}"
                                        for (md, x), rs in per.items()), flush=True)
    res = {f"{md} a={x}": summarise(rs) for (md, x), rs in per.items()}
    for x, s in res.items():
        print(f"{x}: polyp-free {s['pg_neg_called_non_polyp_all_frames']:.3f} {s['pg_neg_by_fold']}, "
              f"CVC called polyp {s['cvc_called_polyp']:.3f}, CVC Dice {s['cvc_dice']:.3f}, "
              f"flips/100 {s['flips_per_100_frames']}")
    if a.json:
        write_text(a.json, json.dumps({"variant": a.variant, "folds": a.folds, "factors": res}, indent=2))


if __name__ == "__main__":
    run_script(main)
