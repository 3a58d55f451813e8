"""The default model's recipe: ImageNet EfficientNet-Lite1, frozen; classifier + segmentation head.

``python -m rtseg.recipes.lite cv --data ../shared/data --folds 3 --json cv.json``
    K-fold cross-validation that cannot leak: a CVC-ClinicDB or PolypGen sequence never spans
    two folds; seeds, classifier, head, threshold, clean-up and the constant-ellipse radius are
    chosen on the training folds only; the held-out fold is scored (full-frame Medico Dice /
    Jaccard on Kvasir-SEG and CVC-ClinicDB, beside the constant baselines; polyp-free PolypGen
    frames called non-polyp; polyp frames called polyp). Several variants (the ideas measured
    one at a time) share one feature extraction.
``python -m rtseg.recipes.holdout --data ../shared/data --variants agree-allneg-video --json holdout.json``
    The model selection rule: each source (a hospital) held out in turn, everything fitted on
    the others (:mod:`rtseg.recipes.holdout`).
``python -m rtseg.recipes.lite classifier --data ../shared/data --folds 3 --json cls.json``
    the classifier alone over its options (negatives used, regularisation): seconds per fit.
``python -m rtseg.recipes.lite build --data ../shared/data --out rtseg/assets/default_model``
    the same fit on all the data, written as a bundle (variant ``DEFAULT_VARIANT``, the shipped model).

Labels used: image-level folder labels (Kvasir-SEG / CVC-ClinicDB / PolypGen positive =
polyp; PolypGen negative, old crops = non-polyp; whole-image label propagation scores 0.9996+
on these sources, see docs/paper.md), and the masks of 100 seed images only (70 Kvasir-SEG +
30 CVC-ClinicDB, the paper's seed count): for the head's targets and for the Run-1-style
in-domain negative tiles (3 x 3 tiles of the seed images' active area without mask pixels).
Masks of other training images are used only to choose the threshold (as ``rtseg tune``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from rtseg.model.active_area import paste
from rtseg.evaluate.baselines import ellipse_mask
from rtseg.recipes.layout import DataFolder, Item, group_folds, recipe_parser
from rtseg.errors import UserError
from rtseg.imageio import read_image, read_mask
from rtseg.evaluate.metrics import image_scores
from rtseg.model.bundle import Bundle, build_model
from rtseg.model.postprocess import refine
from rtseg.train.probe import fit_classifier, logits_of, set_classifier
# part 1 of the recipe (settings, variants, one fit; its data): rtseg.recipes.lite_fit, lite_data
from rtseg.recipes.lite_data import FeatureStore, add_tiles, ordered, seeds_of
from rtseg.recipes.lite_fit import (ARCH, DEFAULT_VARIANT, SIZE, VARIANTS, Fit, Variant, fit, flipped_of, manifest,
                                    maps_of)


def lite_variant(name: str) -> Variant:
    """The variant called ``name``; an unknown name is one error line, not a traceback."""
    if name not in VARIANTS:
        raise UserError(f"unknown variant {name!r}; known: {', '.join(sorted(VARIANTS))}")
    return VARIANTS[name]


# --------------------------------------------------------------------------------------------
# scoring a held-out fold
# --------------------------------------------------------------------------------------------
def score(store: FeatureStore, f: Fit, test: dict[str, list[Item]], v: Variant) -> dict:
    from rtseg.recipes.lite_fit import clip_probs
    from rtseg.recipes.lite_temporal import flips, stream_calls

    # the call as the live loop shows it on video (CallSmoother at f.call_smoothing): sequences
    # in frame order; single images are one-frame clips, which it leaves as they are
    vid = {s: clip_probs(f, store, test[s], v.agree) for s in ("cvc", "pg_neg") if test.get(s)}
    shown = {k: z for p in vid.values() for k, z in stream_calls(p, f.call_smoothing).items()}
    out: dict = {"stream": {"call_smoothing": f.call_smoothing,
                            "flips": [sum(x) for x in zip(*(flips(p, f.call_smoothing) for p in vid.values()))],
                            "flips_each_frame_alone": [sum(x) for x in zip(*(flips(p, 0.0) for p in vid.values()))]}}
    for src in ("kvasir", "cvc"):
        if test[src]:
            out[src] = polyp_scores(store, f, test[src], v, shown)
    for src in ("pg_neg", "pg_pos", "non_polyp"):
        if test.get(src):
            prob, _ = maps_of(f, store.get([str(it.image) for it in test[src]]), SIZE, False, v.agree)
            key = "called_non_polyp" if src in ("pg_neg", "non_polyp") else "called_polyp"
            ok = prob <= 0.5 if key == "called_non_polyp" else prob > 0.5
            out[src] = {key: round(float(ok.mean()), 4), "n": len(test[src])}
            if src == "pg_neg":  # per held-out sequence: one sequence can carry a fold
                groups = np.array([it.group for it in test[src]])
                out[src]["per_sequence"] = {g: [round(float(ok[groups == g].mean()), 4), int((groups == g).sum())]
                                            for g in sorted(set(groups))}
                sok = np.array([not shown[str(it.image)] for it in test[src]])
                out[src]["stream_called_non_polyp"] = round(float(sok.mean()), 4)
                out[src]["stream_per_sequence"] = {g: round(float(sok[groups == g].mean()), 4)
                                                   for g in sorted(set(groups))}
    return out


def polyp_scores(store: FeatureStore, f: Fit, items: list[Item], v: Variant, shown: dict[str, bool]) -> dict:
    """Scores of polyp frames with masks: full-frame Dice, Jaccard, recall and precision of the
    product's mask (empty where the frame is called polyp-free), of the mask as the live loop
    shows it (``shown``: the averaged call of a frame in a clip), of the ungated map and of the
    constant masks; the fraction called polyp."""
    c = store.get([str(it.image) for it in items])
    cf = flipped_of(store, items, v)
    prob, _ = maps_of(f, c, SIZE, False, v.agree, cf)
    _, maps = maps_of(f, c, SIZE, False, False, cf)  # ungated
    called = prob > 0.5
    rows: dict[str, list] = {"model": [], "stream": [], "ungated": [], "ellipse": [], "all_foreground": []}
    for it, mp, bx, zi in zip(items, maps, c.boxes, called):
        truth = read_mask(it.mask)
        full = paste(mp.astype(np.float32), bx, truth.shape) > f.threshold
        pred = refine(full, f.steps) if f.steps else full
        # the product's mask: empty where the classifier says no polyp (gate)
        rows["model"].append(image_scores(pred if (zi or not v.gate) else np.zeros_like(pred), truth))
        zs = zi and shown.get(str(it.image), True)  # the live loop: its call must agree too
        rows["stream"].append(image_scores(pred if (zs or not v.gate) else np.zeros_like(pred), truth))
        rows["ungated"].append(image_scores(pred, truth))
        rows["ellipse"].append(image_scores(ellipse_mask(truth.shape, f.radius), truth))
        rows["all_foreground"].append(image_scores(np.ones_like(truth), truth))
    out: dict = {k: {m_: round(float(np.mean([r[m_] for r in rs])), 4)
                     for m_ in ("dice", "jaccard", "recall", "precision")} for k, rs in rows.items()}
    out["n"] = len(items)
    out["called_polyp"] = round(float(called.mean()), 4)
    out["stream_called_polyp"] = round(float(np.mean([shown.get(str(it.image), z)
                                                      for it, z in zip(items, called)])), 4)
    # the live loop draws a frame's own mask only where its own rule and the averaged call agree
    out["stream_masked"] = round(float(np.mean([z and shown.get(str(it.image), True)
                                                for it, z in zip(items, called)])), 4)
    return out


def load_all(data: Path, crops: int = 600) -> dict[str, list[Item]]:
    df = DataFolder.open(data)
    return {"kvasir": df.kvasir, "cvc": df.cvc, "pg_neg": df.pg_neg, "pg_pos": df.pg_pos,
            "non_polyp": ordered(df.non_polyp)[:crops], "bkai": df.bkai}


def open_store(items: dict[str, list[Item]], cache: Path | None) -> FeatureStore:
    m = manifest()
    model = build_model(ARCH, pretrained=True).eval()
    store = FeatureStore(model, m, cache)
    for src, its in items.items():
        store.add([str(it.image) for it in its], read_image, src)
    # seed-tile candidates: the first images of every source, in seed order, per fold
    store.tile_keys = {}
    return store


def _mean_sd(vals: list[float]) -> str:
    return f"{np.mean(vals):.3f} ± {np.std(vals):.3f}"


def stream_summary(rs: list[dict]) -> dict:
    """The held-out folds' calls as the live loop shows them on video (``score``'s "stream")."""
    n_neg = [r["pg_neg"]["n"] for r in rs]
    pos = [(r[s]["called_polyp"], r[s]["n"]) for r in rs for s in ("kvasir", "pg_pos")] + \
        [(r["cvc"]["stream_called_polyp"], r["cvc"]["n"]) for r in rs]
    fl = [sum(r["stream"]["flips"][i] for r in rs) for i in (0, 1)]
    fl0 = [sum(r["stream"]["flips_each_frame_alone"][i] for r in rs) for i in (0, 1)]
    return {"call_smoothing_by_fold": [r["stream"]["call_smoothing"] for r in rs],
            "stream_pg_neg_called_non_polyp": _mean_sd([r["pg_neg"]["stream_called_non_polyp"] for r in rs]),
            "stream_pg_neg_called_non_polyp_all_frames": round(
                sum(r["pg_neg"]["stream_called_non_polyp"] * n for r, n in zip(rs, n_neg)) / max(1, sum(n_neg)), 4),
            "stream_pg_neg_called_non_polyp_per_sequence": dict(sorted(
                (g, a) for r in rs for g, a in r["pg_neg"]["stream_per_sequence"].items())),
            "stream_cvc_called_polyp": _mean_sd([r["cvc"]["stream_called_polyp"] for r in rs]),
            "stream_cvc_masked": _mean_sd([r["cvc"]["stream_masked"] for r in rs]),
            "stream_polyp_called_polyp_all_frames": round(sum(a * n for a, n in pos) / max(1, sum(n for _, n in pos)), 4),
            "stream_flips_per_100_frames": round(100 * fl[0] / max(1, fl[1]), 2),
            "flips_per_100_frames_each_frame_alone": round(100 * fl0[0] / max(1, fl0[1]), 2)}


def cross_validate(data: Path, folds: int, variants: list[str], cache: Path | None) -> dict:
    chosen = {name: lite_variant(name) for name in variants}  # checked before any work
    items = load_all(data)
    store = open_store(items, cache)
    fold_of = {src: group_folds(its, folds) for src, its in items.items()}
    results: dict = {v: [] for v in variants}
    for k in range(folds):
        train = {src: [it for j, f in enumerate(fl) if j != k for it in f] for src, fl in fold_of.items()}
        test = {src: fl[k] for src, fl in fold_of.items()}
        add_tiles(store, seeds_of(train))
        for name in variants:
            v = chosen[name]
            t = time.time()
            f = fit(store, train, v, store.m)
            sc = score(store, f, test, v)
            sc["tune"] = f.tune
            results[name].append(sc)
            print(f"fold {k} {name}: kvasir {sc['kvasir']['model']['dice']:.3f} (ellipse "
                  f"{sc['kvasir']['ellipse']['dice']:.3f}) cvc {sc['cvc']['model']['dice']:.3f} "
                  f"(ellipse {sc['cvc']['ellipse']['dice']:.3f}) pg_neg "
                  f"{sc['pg_neg']['called_non_polyp']:.3f} polyp {sc['kvasir']['called_polyp']:.3f}/"
                  f"{sc['cvc']['called_polyp']:.3f} [{time.time() - t:.0f} s] {f.tune}", flush=True)
    summary = {}
    for name, rs in results.items():
        s = {}
        for src in ("kvasir", "cvc"):
            for who in ("model", "stream", "ungated", "ellipse", "all_foreground"):
                for met in ("dice", "jaccard"):
                    s[f"{src}_{who}_{met}"] = _mean_sd([r[src][who][met] for r in rs])
            s[f"{src}_called_polyp"] = _mean_sd([r[src]["called_polyp"] for r in rs])
        s["pg_neg_called_non_polyp"] = _mean_sd([r["pg_neg"]["called_non_polyp"] for r in rs])
        # every PolypGen polyp-free frame is held out once: the rate over all of them, and per sequence
        seqs = {g: v for r in rs for g, v in r["pg_neg"]["per_sequence"].items()}
        s["pg_neg_called_non_polyp_all_frames"] = round(sum(a * n for a, n in seqs.values()) /
                                                        max(1, sum(n for _, n in seqs.values())), 4)
        s["pg_neg_called_non_polyp_per_sequence"] = {g: a for g, (a, _) in sorted(seqs.items())}
        pos = [(r[src]["called_polyp"], r[src]["n"]) for r in rs for src in ("kvasir", "cvc", "pg_pos")]
        s["polyp_called_polyp_all_frames"] = round(sum(a * n for a, n in pos) / max(1, sum(n for _, n in pos)), 4)
        s["pg_pos_called_polyp"] = _mean_sd([r["pg_pos"]["called_polyp"] for r in rs])
        s.update(stream_summary(rs))
        s["crops_called_non_polyp"] = _mean_sd([r["non_polyp"]["called_non_polyp"] for r in rs])
        summary[name] = s
    return {"folds": folds, "variants": {n: VARIANTS[n].__dict__ for n in variants},
            "per_fold": results, "summary": summary}


def classifier_cv(data: Path, folds: int, cache: Path | None,
                  cs: tuple[float, ...] = (0.05, 0.2, 0.5, 2.0)) -> dict:
    """The classifier alone (no head: seconds per fit), over the negatives used and C: the
    held-out rates of polyp-free PolypGen frames called non-polyp and polyp frames called polyp."""
    items = load_all(data)
    store = open_store(items, cache)
    fold_of = {src: group_folds(its, folds) for src, its in items.items()}
    grid = [(c, tiles, crops, pg_pos, 1.0) for c in cs for tiles in (True, False)
            for crops in (False, True) for pg_pos in (True, False)]
    grid += [(0.5, True, False, True, wn) for wn in (2.0, 4.0)]  # PolypGen negatives weighted
    rows: dict = {}
    for k in range(folds):
        train = {src: [it for j, f in enumerate(fl) if j != k for it in f] for src, fl in fold_of.items()}
        test = {src: fl[k] for src, fl in fold_of.items()}
        seeds = seeds_of(train)
        add_tiles(store, seeds)
        from sklearn.metrics import roc_auc_score

        for c, tiles, crops, pg_pos, wn in grid:
            pos = [str(it.image) for it in train["kvasir"] + train["cvc"] + (train["pg_pos"] if pg_pos else [])]
            neg = [str(it.image) for it in train["pg_neg"] + (train["non_polyp"] if crops else [])]
            if tiles:
                neg += [t for it in seeds for t in store.tile_keys.get(str(it.image), [])]
            gap = np.concatenate([store.get(pos).gap, store.get(neg).gap])
            sw = np.ones(len(pos) + len(neg))
            sw[len(pos):len(pos) + len(train["pg_neg"])] = wn
            w, b = fit_classifier(gap, np.r_[np.ones(len(pos)), np.zeros(len(neg))], c, sample_weight=sw)
            r, zs = {}, {}
            for src in ("kvasir", "cvc", "pg_pos", "pg_neg", "non_polyp"):
                z = zs[src] = logits_of(store.get([str(it.image) for it in test[src]]).gap, w, b)
                r[src] = float((z > 0).mean()) if src in ("kvasir", "cvc", "pg_pos") else float((z <= 0).mean())
            # how well the logit ranks PolypGen polyp above polyp-free frames, whatever the bias
            r["pg_auc"] = float(roc_auc_score(np.r_[np.ones(len(zs["pg_pos"])), np.zeros(len(zs["pg_neg"]))],
                                              np.r_[zs["pg_pos"], zs["pg_neg"]]))
            name = f"C={c} tiles={tiles} crops={crops} pg_pos={pg_pos}" + (f" pg_neg_weight={wn}" if wn != 1.0 else "")
            rows.setdefault(name, []).append(r)
    summary = {name: {src: round(float(np.mean([r[src] for r in rs])), 4) for src in rs[0]}
               for name, rs in rows.items()}
    for name, r in summary.items():
        print(f"{name:45s} polyp called polyp: kvasir {r['kvasir']:.3f} cvc {r['cvc']:.3f} "
              f"pg_pos {r['pg_pos']:.3f} | called non-polyp: pg_neg {r['pg_neg']:.3f} crops {r['non_polyp']:.3f}"
              f" | PolypGen AUC {r['pg_auc']:.3f}")
    return {"folds": folds, "per_fold": rows, "summary": summary}


def bundle_of(f: Fit, v: Variant, variant: str) -> Bundle:
    """A fit as a model bundle: the network (with the fit's top, classifier and head) and its
    manifest (threshold, clean-up, frame rule, training summary)."""
    from rtseg.model.thresholds import ThresholdPolicy

    m = manifest(gate=v.gate, head=v.head, agree=v.agree, agree_at=f.agree_at)
    model = build_model(ARCH, pretrained=True, head=m.head).eval()
    # the classifier's operating point is its bias: the graph calls a frame polyp at logit > 0
    set_classifier(model, f.w, f.b - f.shift)
    if f.top is not None:  # the fine-tuned top of the backbone (variant top_epochs)
        f.top.install(model)
    if f.head is not None:
        model.rtseg_head.load_state_dict(f.head.state_dict())
    backbone = "ImageNet efficientnet-lite1, frozen" + (f"; {f.top.describe()}" if f.top is not None else "")
    if v.finetune_steps:
        backbone = (f"ImageNet efficientnet-lite1; blocks {f.top.from_block + 1}-{f.top.from_block + len(f.top.blocks)}, "
                    "conv_head, classifier and head fine-tuned end to end through augmented views")
    m = m.replace(threshold=ThresholdPolicy.parse(f"above {f.threshold}"), postprocess=tuple(f.steps),
                  call_smoothing=f.call_smoothing,
                  training={"recipe": f"python -m rtseg.recipes.lite build --variant {variant}",
                            "backbone": backbone, "variant": v.__dict__, **f.tune},
                  metrics={"tuning": {"baselines": {"ellipse": {"radius": f.radius}}}})
    return Bundle(model, m)


def build(data: Path, out: Path, cache: Path | None, variant: str = DEFAULT_VARIANT) -> Path:
    """Fit on all the data and write the bundle (weights + manifest)."""
    import torch

    from rtseg.model.bundle import save_bundle

    v = lite_variant(variant)
    items = load_all(data)
    store = open_store(items, cache)
    bundle = bundle_of(fit(store, items, v, store.m), v, variant)
    with torch.no_grad():
        save_bundle(bundle, out, half=True)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = recipe_parser("python -m rtseg.recipes.lite", __doc__, ["cv", "classifier", "build"])
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--variants", default="default")
    ap.add_argument("--variant", default=DEFAULT_VARIANT, help=f"build: the shipped model is '{DEFAULT_VARIANT}'")
    ap.add_argument("--cache", type=Path, default=Path("runs/lite_features"))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("runs/lite_model"))
    a = ap.parse_args(argv)
    try:
        _run(a)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _run(a) -> None:
    import torch

    torch.set_flush_denormal(True)
    if a.stage == "cv":
        res = cross_validate(a.data, a.folds, a.variants.split(","), a.cache)
        print(json.dumps(res["summary"], indent=2))
        if a.json:
            from rtseg.atomic import write_json

            write_json(a.json, res)
    elif a.stage == "classifier":
        res = classifier_cv(a.data, a.folds, a.cache)
        if a.json:
            from rtseg.atomic import write_json

            write_json(a.json, res)
    else:
        print(build(a.data, a.out, a.cache, a.variant))


if __name__ == "__main__":
    main()
