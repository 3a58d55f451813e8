"""Refining the default model's maps after the graph, each idea measured alone by the
recipe's leak-free cross-validation:

    python experiments/cam_refinement.py --data ../shared/data --json runs/refine.json

Per outer fold the recipe (``--variant``, default the shipped variant) is fitted on the
training folds; then for every refinement the threshold and clean-up are chosen on the training
folds' tune set (as the recipe does for the plain maps) and the held-out Kvasir-SEG / CVC-ClinicDB
images are scored on the full frame, gated by the model's own frame decision. Refinements (all on
the S x S network view, after the head):

    none          the head's map as it is (the shipped model)
    slic-N        superpixel pooling: the map averaged inside each of ~N SLIC superpixels of the
                  view (scikit-image), then thresholded; ``-blend``: the mean of map and pooled map
    crf-W         dense CRF (pydensecrf2; Krähenbühl & Koltun), unary = the head's probability,
                  Gaussian + bilateral (RGB) pairwise terms, bilateral weight W, 5 mean-field steps
    multiscale    the head's map at a second input size (288) resized and averaged with 224's
                  (its cost: a second pass of the fused graph, timed by ``--timing-only``)

Printed per idea: held-out Dice / Jaccard (mean of folds), the constant-ellipse baseline, and the
median milliseconds per frame the refinement adds on this machine (one thread). Needs the
experiment extra: ``pip install -e ".[experiments]"`` (scikit-image, pydensecrf2).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np

from rtseg.atomic import write_json
from rtseg.errors import UserError, run_script
from rtseg.evaluate.baselines import ellipse_mask
from rtseg.evaluate.metrics import image_scores
from rtseg.imageio import read_image, read_mask
from rtseg.model.active_area import paste
from rtseg.model.postprocess import refine
from rtseg.recipes.layout import group_folds
from rtseg.recipes.distill.data import SIZE, FeatureStore, load_all, open_store, seeds_of
from rtseg.recipes.distill.fit import DEFAULT_VARIANT, VARIANTS, choose_threshold, fit, maps_of, truth_crops
from rtseg.train.edge_refine import dense_crf, slic_pool
from rtseg.train.edge_refine import view_of as edge_view
from rtseg.train.probe import head_cams, head_maps

MS_SIZE = 288


def view_of(path) -> np.ndarray:
    return edge_view(read_image(path), SIZE)


IDEAS = {
    "none": lambda v, p: p,
    "slic-100": lambda v, p: slic_pool(v, p, 100),
    "slic-250": lambda v, p: slic_pool(v, p, 250),
    "slic-250-blend": lambda v, p: slic_pool(v, p, 250, blend=True),
    "crf-3": lambda v, p: dense_crf(v, p, 3),
    "crf-10": lambda v, p: dense_crf(v, p, 10),
}


def refined(idea: str, views: list[np.ndarray], maps: np.ndarray) -> tuple[np.ndarray, float]:
    """(refined maps, median ms per frame)"""
    out, ms = np.empty_like(maps), []
    for i, (v, p) in enumerate(zip(views, maps)):
        t = time.perf_counter()
        out[i] = IDEAS[idea](v, p)
        ms.append(1e3 * (time.perf_counter() - t))
    return out, float(np.median(ms))


def held_out_scores(items, boxes, prob, maps, thr, steps, radius) -> dict:
    """Full-frame Dice / Jaccard of the gated, thresholded maps, and of the constant ellipse."""
    rows = {"model": [], "ellipse": []}
    for it, bx, pr, mp in zip(items, boxes, prob, maps):
        truth = read_mask(it.mask)
        full = paste(mp.astype(np.float32), bx, truth.shape) > thr
        pred = refine(full, steps) if steps else full
        rows["model"].append(image_scores(pred if pr > 0.5 else np.zeros_like(pred), truth))
        rows["ellipse"].append(image_scores(ellipse_mask(truth.shape, radius), truth))
    return {k: {m: float(np.mean([r[m] for r in rs])) for m in ("dice", "jaccard")} for k, rs in rows.items()}


def graph_ms(sizes=(SIZE, MS_SIZE), runs: int = 40, threads: int = 2) -> dict:
    """Median / min / max ms per 384 x 288 frame of the default model's fused ONNX graph
    (onnxruntime, ``threads`` threads, batch 1) at each network input size: what a second,
    multi-scale pass costs per frame in the live loop."""
    import tempfile

    import onnxruntime as ort

    from rtseg.graph.onnx import export_onnx
    from rtseg.model.bundle import Bundle, default_bundle_path, load_bundle

    b = load_bundle(default_bundle_path())
    frame = np.random.default_rng(0).integers(0, 256, (1, 288, 384, 3), dtype=np.uint8)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for s in sizes:
            path = export_onnx(Bundle(b.model, b.manifest.replace(input_size=s)), Path(tmp) / f"{s}.onnx").path
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            name = sess.get_inputs()[0].name
            for _ in range(5):
                sess.run(None, {name: frame})
            ms = []
            for _ in range(runs):
                t = time.perf_counter()
                sess.run(None, {name: frame})
                ms.append(1e3 * (time.perf_counter() - t))
            out[s] = {"median_ms": round(float(np.median(ms)), 2), "min_ms": round(float(np.min(ms)), 2),
                      "max_ms": round(float(np.max(ms)), 2)}
            print(f"fused graph at input {s}: median {out[s]['median_ms']} ms "
                  f"(min {out[s]['min_ms']}, max {out[s]['max_ms']}) per frame", flush=True)
    return out


def run(data: Path, cache: Path, variant: str, ideas: list[str], multiscale: bool) -> dict:
    items = load_all(data)
    store = open_store(items, cache)
    ms_store = None
    if multiscale:
        ms_store = FeatureStore(store.model, store.m.replace(input_size=MS_SIZE), cache)
        for src in ("kvasir", "cvc"):
            ms_store.add([str(it.image) for it in items[src]], read_image, f"ms{MS_SIZE}-{src}")
    fold_of = {s: group_folds(i, 3) for s, i in items.items()}
    res: dict = {}
    for k in range(3):
        train = {s: [it for j, fl in enumerate(fs) if j != k for it in fl] for s, fs in fold_of.items()}
        test = {s: fs[k] for s, fs in fold_of.items()}
        f = fit(store, train, VARIANTS[variant], store.m, log=lambda *a: None)
        tune = seeds_of(train)  # the recipe chooses its threshold on the seed masks
        tc = store.get([str(it.image) for it in tune])
        truths = truth_crops(tune, tc)
        sets = {"tune": (tune, tc), **{s: (test[s], store.get([str(it.image) for it in test[s]]))
                                        for s in ("kvasir", "cvc")}}
        base = {name: maps_of(f, c, False, True) for name, (_, c) in sets.items()}
        views = {name: [view_of(it.image) for it in its] for name, (its, _) in sets.items()}
        todo = list(ideas) + (["multiscale"] if multiscale else [])
        for idea in todo:
            got, ms = {}, []
            for name, (its, c) in sets.items():
                prob, mp = base[name]
                if idea == "multiscale":
                    t0 = time.perf_counter()
                    c2 = f.view(ms_store.get([str(it.image) for it in its]))  # a fine-tuned top, if any
                    m2 = head_maps(f.head, c2, head_cams(c2.head, f.w), SIZE)
                    got[name] = (prob, (mp + m2) / 2)
                    ms.append(float("nan"))
                else:
                    r, t = refined(idea, views[name], mp)
                    got[name] = (prob, r)
                    ms.append(t)
            dice_t, thr, steps = choose_threshold(got["tune"][1], truths)
            row = {"tune_dice": dice_t, "threshold": thr, "postprocess": list(steps),
                   "ms_per_frame": float(np.nanmedian(ms)) if not np.all(np.isnan(ms)) else None}
            for s in ("kvasir", "cvc"):
                row[s] = held_out_scores(sets[s][0], sets[s][1].boxes, *got[s], thr, steps, f.radius)
            res.setdefault(idea, []).append(row)
            print(f"fold {k} {idea:15s} kvasir {row['kvasir']['model']['dice']:.3f} cvc "
                  f"{row['cvc']['model']['dice']:.3f} (ellipse {row['kvasir']['ellipse']['dice']:.3f}/"
                  f"{row['cvc']['ellipse']['dice']:.3f}) thr {thr} {list(steps)} "
                  f"{row['ms_per_frame'] if row['ms_per_frame'] is not None else '-'} ms", flush=True)
    summary = {}
    for idea, rows in res.items():
        s = {f"{src}_{who}_{m}": round(float(np.mean([r[src][who][m] for r in rows])), 4)
             for src in ("kvasir", "cvc") for who in ("model", "ellipse") for m in ("dice", "jaccard")}
        s["cvc_dice_folds"] = [round(r["cvc"]["model"]["dice"], 3) for r in rows]
        ms = [r["ms_per_frame"] for r in rows if r["ms_per_frame"] is not None]
        s["ms_per_frame"] = round(float(np.median(ms)), 2) if ms else None
        summary[idea] = s
        print(f"{idea:15s} Kvasir-SEG {s['kvasir_model_dice']:.3f} (J {s['kvasir_model_jaccard']:.3f}) "
              f"CVC-ClinicDB {s['cvc_model_dice']:.3f} (J {s['cvc_model_jaccard']:.3f}) "
              f"ellipse {s['kvasir_ellipse_dice']:.3f}/{s['cvc_ellipse_dice']:.3f} "
              f"+{s['ms_per_frame']} ms/frame", flush=True)
    return {"variant": variant, "per_fold": res, "summary": summary}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--cache", type=Path, default=Path("runs/lite_features"))
    ap.add_argument("--variant", default=DEFAULT_VARIANT, choices=sorted(VARIANTS))
    ap.add_argument("--ideas", default=",".join(IDEAS), help=f"comma-separated, of {', '.join(IDEAS)}")
    ap.add_argument("--no-multiscale", action="store_true")
    ap.add_argument("--timing-only", action="store_true",
                    help="only time the default model's fused graph at 224 and 288 (onnxruntime)")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    ideas = [i for i in a.ideas.split(",") if i]

    def work() -> dict:
        unknown = [i for i in ideas if i not in IDEAS]
        if unknown:
            raise UserError(f"unknown idea(s) {unknown}; choose from {list(IDEAS)}")
        try:
            import pydensecrf.densecrf  # noqa: F401
            import skimage  # noqa: F401
        except ImportError as exc:
            raise UserError(f"{exc.name} is missing: pip install -e \".[experiments]\"") from None
        if a.timing_only:
            return {"graph_ms": graph_ms()}
        cv2.setNumThreads(1)
        res = run(a.data, a.cache, a.variant, ideas, not a.no_multiscale)
        if not a.no_multiscale:
            res["graph_ms"] = graph_ms()
        return res

    res = run_script(work)
    if a.json:
        write_json(a.json, res)


if __name__ == "__main__":
    main()
