"""The default model's recipe: ImageNet EfficientNet-Lite1, frozen; classifier + segmentation head.

``python -m rtseg.recipes.lite cv --data ../shared/data --folds 3 --json cv.json``
    K-fold cross-validation that cannot leak: a CVC-ClinicDB or PolypGen sequence never spans
    two folds; seeds, classifier, head, threshold, clean-up and the constant-ellipse radius are
    chosen on the training folds only; the held-out fold is scored (full-frame Medico Dice /
    Jaccard on Kvasir-SEG and CVC-ClinicDB, beside the constant baselines; polyp-free PolypGen
    frames called non-polyp; polyp frames called polyp). Several variants (the ideas measured
    one at a time) share one feature extraction.
``python -m rtseg.recipes.lite classifier --data ../shared/data --folds 3 --json cls.json``
    the classifier alone over its options (negatives used, regularisation): seconds per fit.
``python -m rtseg.recipes.lite build --data ../shared/data --out rtseg/assets/default_model``
    the same fit on all the data, written as a bundle (variant ``agree``, the shipped model).

Labels used: image-level folder labels (Kvasir-SEG / CVC-ClinicDB / PolypGen positive =
polyp; PolypGen negative, old crops = non-polyp; whole-image label propagation scores 0.9996+
on these sources, see the README), and the masks of 100 seed images only (70 Kvasir-SEG +
30 CVC-ClinicDB, the paper's seed count): for the head's targets and for the Run-1-style
in-domain negative tiles (3 x 3 tiles of the seed images' active area without mask pixels).
Masks of other training images are used only to choose the threshold (as ``rtseg tune``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rtseg.model.active_area import Box, paste
from rtseg.evaluate.baselines import ellipse_mask
from rtseg.recipes.layout import DataFolder, Item, _h, group_folds
from rtseg.errors import UserError
from rtseg.model.head import HeadConfig, SegHead
from rtseg.imageio import read_image, read_mask
from rtseg.evaluate.metrics import image_scores
from rtseg.model.arch import LITE_MEAN, LITE_STD
from rtseg.model.bundle import Bundle, build_model
from rtseg.model.manifest import Manifest
from rtseg.model.postprocess import refine
from rtseg.train.probe import (TARGET, Cached, extract, fit_classifier, fit_head, head_cams, head_maps,
                         logits_of, mask_target, pseudo_targets, set_classifier)

ARCH = "efficientnet-lite1"
SIZE = 224
SEEDS = {"kvasir": 70, "cvc": 30}
THRESHOLDS = tuple(round(float(t), 2) for t in np.arange(0.10, 0.76, 0.05))
STEPS = ((), ("largest",), ("largest", "fill"))
RADII = tuple(round(r, 3) for r in np.arange(0.10, 0.501, 0.025))


@dataclass
class Variant:
    """One training set-up; the ideas are measured by switching one field at a time."""

    name: str = "default"
    tiles: bool = True  # in-domain negative tiles of the seed images
    crops: bool = False  # the old non-polyp crops as negatives
    pg_pos: bool = True  # PolypGen polyp frames as positives (image labels)
    head: bool = True  # segmentation head (else: the plain Grad-CAM, thresholded)
    selftrain: bool = True  # second head round on its own confident maps
    gate: bool = True  # no mask where the frame is called polyp-free
    agree: bool = False  # called polyp only if the classifier and the head's max pixel agree
    flip: bool = False  # test-time horizontal flip (experiment; not in the exported graph)
    c: float = 0.5  # logistic-regression C
    neg_weight: float = 1.0  # sample weight of the in-domain polyp-free frames (PolypGen)
    epochs: int = 30  # head epochs (self-training round: a third, on at most 400 images)


VARIANTS = {
    "default": Variant(),
    "no-selftrain": Variant("no-selftrain", selftrain=False),
    "no-tiles": Variant("no-tiles", tiles=False),
    "crops": Variant("crops", crops=True),
    "no-pg-pos": Variant("no-pg-pos", pg_pos=False),
    "no-gate": Variant("no-gate", gate=False),
    # the shipped model: a frame is polyp only if the classifier and the head's most confident
    # pixel agree (PolypGen polyp-free frames called non-polyp 0.63 -> 0.87 by CV)
    "agree": Variant("agree", agree=True),
    "agree-flip": Variant("agree-flip", agree=True, flip=True),
    "cam-only": Variant("cam-only", head=False, selftrain=False),
}


def manifest(gate: bool = True, head: bool = True, agree: bool = False) -> Manifest:
    return Manifest(arch=ARCH, input_size=SIZE, mean=LITE_MEAN, std=LITE_STD, fov_mask=True,
                    active_area=True, cam_layer="head", threshold="above 0.5",
                    head=HeadConfig(gate=gate, agree=agree).to_dict() if head else None)


# --------------------------------------------------------------------------------------------
# data: items, seed tiles, features
# --------------------------------------------------------------------------------------------
def ordered(items: list[Item]) -> list[Item]:
    return sorted(items, key=lambda it: _h(str(it.image.name), 1))


def seed_tiles(img: np.ndarray, mask: np.ndarray, m: Manifest, grid: int = 3) -> list[np.ndarray]:
    """Tiles of the image's active area that hold no polyp pixel (in-domain negatives)."""
    from rtseg.model.active_area import prepare

    view, box = prepare(img, True)
    mk = mask[box.y0:box.y1, box.x0:box.x1]
    h, w = view.shape[:2]
    out = []
    for i in range(grid):
        for j in range(grid):
            ys, xs = slice(i * h // grid, (i + 1) * h // grid), slice(j * w // grid, (j + 1) * w // grid)
            tile = view[ys, xs]
            # a tile that is mostly black border says nothing
            if not mk[ys, xs].any() and (tile.max(axis=2) > 30).mean() > 0.6:
                out.append(np.ascontiguousarray(tile))
    return out


class FeatureStore:
    """Features of every image used, computed once (and kept on disk under ``cache``)."""

    def __init__(self, model, m: Manifest, cache: Path | None) -> None:
        self.model, self.m, self.cache = model, m, cache
        self.index: dict[str, int] = {}
        self.parts: list[Cached] = []
        self.data: Cached | None = None

    def add(self, keys: list[str], loader, label: str) -> None:
        keys = [k for k in keys if k not in self.index]
        if not keys:
            return
        f = self.cache / f"{label}.npz" if self.cache else None
        if f is not None and f.is_file():
            try:
                z = np.load(f, allow_pickle=True)
                if list(z["keys"]) == keys:
                    self._append(keys, Cached(z["gap"], z["head"], [z[f"f{i}"] for i in range(3)],
                                              [Box(*b) for b in z["boxes"]]))
                    return
            except Exception as exc:  # a damaged cache file (numpy/zipfile raise many types)
                print(f"  feature cache {f} unreadable ({type(exc).__name__}): recomputing", flush=True)
        t = time.time()
        out = []
        for s in range(0, len(keys), 64):
            imgs = [loader(k) for k in keys[s:s + 64]]
            out.append(extract(self.model, self.m, imgs, self.m.head["features"]))
        c = Cached.concat(out)
        print(f"  features of {len(keys)} {label}: {time.time() - t:.0f} s", flush=True)
        if f is not None:
            f.parent.mkdir(parents=True, exist_ok=True)
            np.savez(f, keys=np.array(keys), gap=c.gap, head=c.head,
                     **{f"f{i}": x for i, x in enumerate(c.feats)},
                     boxes=np.array([b.as_tuple() for b in c.boxes]))
        self._append(keys, c)

    def _append(self, keys: list[str], c: Cached) -> None:
        base = len(self.index)
        for i, k in enumerate(keys):
            self.index[k] = base + i
        self.parts.append(c)
        self.data = None

    def get(self, keys: list[str]) -> Cached:
        if self.data is None:
            self.data = Cached.concat(self.parts)
        return self.data.take([self.index[k] for k in keys])


# --------------------------------------------------------------------------------------------
# one fit: classifier + head on a training selection
# --------------------------------------------------------------------------------------------
@dataclass
class Fit:
    w: np.ndarray
    b: float
    head: SegHead | None
    threshold: float
    steps: tuple[str, ...]
    radius: float
    tune: dict = field(default_factory=dict)


def _truth_crop(mask: np.ndarray, box: Box, size: int) -> np.ndarray:
    return mask_target(mask, box, size) > 0.5


def maps_of(fit: Fit, c: Cached, size: int, gate: bool, agree: bool = False,
            flipped: Cached | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(frame polyp probability [N], maps [N, size, size] in [0, 1]) exactly as the bundle
    computes them (:func:`rtseg.model.head.decide`). ``flipped``: the same views mirrored (a
    test-time-flip experiment: logits and head maps averaged with the mirrored-back ones)."""
    import torch

    from rtseg.model.gradcam import normalize_cam
    from rtseg.model.head import decide

    z = torch.from_numpy(logits_of(c.gap, fit.w, fit.b))
    raw = head_cams(c.head, fit.w)
    if flipped is not None and fit.head is not None:
        zf = torch.from_numpy(logits_of(flipped.gap, fit.w, fit.b))
        mf = head_maps(fit.head, flipped, head_cams(flipped.head, fit.w), size)[:, :, ::-1]
        maps = torch.from_numpy((head_maps(fit.head, c, raw, size) + mf) / 2)
        return tuple(t.numpy() for t in decide(HeadConfig(gate=gate, agree=agree), (z + zf) / 2, maps))
    if fit.head is None:
        maps = normalize_cam(torch.from_numpy(raw), size)
        prob = torch.sigmoid(z)
        if gate:
            maps = maps * (prob > 0.5).float().view(-1, 1, 1)
        return prob.numpy(), maps.numpy()
    maps = torch.from_numpy(head_maps(fit.head, c, raw, size))
    prob, maps = decide(HeadConfig(gate=gate, agree=agree), z, maps)
    return prob.numpy(), maps.numpy()


def fit(store: FeatureStore, train: dict[str, list[Item]], v: Variant, m: Manifest,
        log=print) -> Fit:
    kv, cvc = ordered(train["kvasir"]), ordered(train["cvc"])
    seeds = kv[:SEEDS["kvasir"]] + cvc[:SEEDS["cvc"]]
    rest = kv[SEEDS["kvasir"]:] + cvc[SEEDS["cvc"]:]
    tune_set = rest[::max(1, len(rest) // 250)]
    pos_keys = [str(it.image) for it in kv + cvc] + ([str(it.image) for it in train["pg_pos"]] if v.pg_pos else [])
    neg_keys = [str(it.image) for it in train["pg_neg"]]
    n_pg_neg = len(neg_keys)
    if v.crops:
        neg_keys += [str(it.image) for it in train["non_polyp"]]
    tile_keys = [k for it in seeds for k in store.tile_keys.get(str(it.image), [])] if v.tiles else []
    neg_keys += tile_keys
    # 1. classifier
    c_pos, c_neg = store.get(pos_keys), store.get(neg_keys)
    gap = np.concatenate([c_pos.gap, c_neg.gap])
    y = np.r_[np.ones(len(pos_keys)), np.zeros(len(neg_keys))]
    sw = np.ones(len(y))
    sw[len(pos_keys):len(pos_keys) + n_pg_neg] = v.neg_weight
    w, b = fit_classifier(gap, y, v.c, sample_weight=sw)
    # 2. head: seed masks + empty masks of negatives (+ own confident maps)
    head = None
    if v.head:
        seed_c = store.get([str(it.image) for it in seeds])
        tg = np.stack([mask_target(read_mask(it.mask), bx) for it, bx in zip(seeds, seed_c.boxes)])
        rng = np.random.default_rng(0)
        nk = list(rng.choice(neg_keys, size=min(len(neg_keys), 3 * len(seeds)), replace=False))
        neg_c = store.get(nk)
        cc = Cached.concat([seed_c, neg_c])
        tgt = np.concatenate([tg, np.zeros((len(nk), TARGET, TARGET), np.float32)])
        wgt = np.ones_like(tgt)
        head = SegHead(HeadConfig(**{**m.head, "gate": v.gate, "agree": v.agree}))
        fit_head(head, cc, head_cams(cc.head, w), tgt, wgt, epochs=v.epochs, seed=0)
        if v.selftrain:
            un_keys = [str(it.image) for it in rest] + ([str(it.image) for it in train["pg_pos"]] if v.pg_pos else [])
            un_c = store.get(un_keys)
            un_raw = head_cams(un_c.head, w)
            pt, pw, keep = pseudo_targets(head_maps(head, un_c, un_raw))
            keep &= logits_of(un_c.gap, w, b) > 0
            idx = np.flatnonzero(keep)
            if len(idx) > 400:
                idx = np.sort(np.random.default_rng(1).choice(idx, 400, replace=False))
            cc2 = Cached.concat([cc, un_c.take(idx)])
            tgt2 = np.concatenate([tgt, pt[idx]])
            wgt2 = np.concatenate([wgt, pw[idx] * 0.5])
            head = SegHead(HeadConfig(**{**m.head, "gate": v.gate, "agree": v.agree}))
            fit_head(head, cc2, head_cams(cc2.head, w), tgt2, wgt2, epochs=max(2, v.epochs // 3),
                     seed=1)
            log(f"    self-training: {len(idx)} of {len(un_keys)} unlabeled polyp images used "
                f"({int(keep.sum())} confident)")
    # 3. threshold, clean-up and the ellipse radius on the training folds' tune set
    f = Fit(w, b, head, 0.5, (), 0.25)
    tc = store.get([str(it.image) for it in tune_set])
    _, maps = maps_of(f, tc, SIZE, v.gate, v.agree, flipped_of(store, tune_set, v))
    truths = [_truth_crop(read_mask(it.mask), bx, SIZE) for it, bx in zip(tune_set, tc.boxes)]
    best = (-1.0, 0.5, ())
    for t in THRESHOLDS:
        pm = maps > t
        for steps in STEPS:
            d = np.mean([image_scores(refine(p, steps) if steps else p, tr)["dice"]
                         for p, tr in zip(pm, truths)])
            if d > best[0]:
                best = (float(d), t, steps)
    f.threshold, f.steps = best[1], best[2]
    # the constant ellipse's radius: relative to the frame, so chosen on the whole-frame
    # truth resized to S x S (the same search as rtseg.evaluate.baselines.choose_radius)
    from rtseg.evaluate.baselines import choose_radius

    whole = np.stack([_truth_crop(read_mask(it.mask), Box.full(read_mask(it.mask).shape), SIZE)
                      for it in tune_set])
    f.radius, _ = choose_radius(whole, RADII)
    f.tune = {"dice": round(best[0], 4), "threshold": f.threshold, "postprocess": list(f.steps),
              "n_tune": len(tune_set), "n_pos": len(pos_keys), "n_neg": len(neg_keys),
              "n_tiles": len(tile_keys), "ellipse_radius": f.radius}
    return f


# --------------------------------------------------------------------------------------------
# scoring a held-out fold
# --------------------------------------------------------------------------------------------
def score(store: FeatureStore, f: Fit, test: dict[str, list[Item]], v: Variant) -> dict:
    out: dict = {}
    for src in ("kvasir", "cvc"):
        items = test[src]
        if not items:
            continue
        c = store.get([str(it.image) for it in items])
        cf = flipped_of(store, items, v)
        prob, _ = maps_of(f, c, SIZE, False, v.agree, cf)
        _, maps = maps_of(f, c, SIZE, False, False, cf)  # ungated
        called = prob > 0.5
        rows = {"model": [], "ungated": [], "ellipse": [], "all_foreground": []}
        for it, mp, bx, zi in zip(items, maps, c.boxes, called):
            truth = read_mask(it.mask)
            full = paste(mp.astype(np.float32), bx, truth.shape) > f.threshold
            pred = refine(full, f.steps) if f.steps else full
            # the product's mask: empty where the classifier says no polyp (gate)
            rows["model"].append(image_scores(pred if (zi or not v.gate) else np.zeros_like(pred), truth))
            rows["ungated"].append(image_scores(pred, truth))
            rows["ellipse"].append(image_scores(ellipse_mask(truth.shape, f.radius), truth))
            rows["all_foreground"].append(image_scores(np.ones_like(truth), truth))
        out[src] = {k: {m_: round(float(np.mean([r[m_] for r in rs])), 4)
                        for m_ in ("dice", "jaccard", "recall", "precision")} for k, rs in rows.items()}
        out[src]["n"] = len(items)
        out[src]["called_polyp"] = round(float(called.mean()), 4)
    for src in ("pg_neg", "pg_pos", "non_polyp"):
        if test.get(src):
            prob, _ = maps_of(f, store.get([str(it.image) for it in test[src]]), SIZE, False, v.agree)
            key = "called_non_polyp" if src in ("pg_neg", "non_polyp") else "called_polyp"
            out[src] = {key: round(float((prob <= 0.5).mean() if key == "called_non_polyp" else (prob > 0.5).mean()), 4),
                        "n": len(test[src])}
    return out


def load_all(data: Path, crops: int = 600) -> dict[str, list[Item]]:
    df = DataFolder.open(data)
    return {"kvasir": df.kvasir, "cvc": df.cvc, "pg_neg": df.pg_neg, "pg_pos": df.pg_pos,
            "non_polyp": ordered(df.non_polyp)[:crops]}


def flipped_of(store: FeatureStore, items: list[Item], v: Variant) -> Cached | None:
    """Features of the mirrored network views of ``items`` (computed once, cached)."""
    if not v.flip:
        return None
    from rtseg.model.active_area import prepare

    keys = [f"{it.image}#flip" for it in items]
    missing = [k for k in keys if k not in store.index]
    if missing:
        import hashlib

        tag = hashlib.sha1("\n".join(missing).encode()).hexdigest()[:12]
        store.add(missing, lambda k: np.ascontiguousarray(prepare(read_image(k[:-5]))[0][:, ::-1]),
                  f"flip-{tag}")
    return store.get(keys)


def open_store(items: dict[str, list[Item]], cache: Path | None) -> FeatureStore:
    m = manifest()
    model = build_model(ARCH, pretrained=True).eval()
    store = FeatureStore(model, m, cache)
    for src, its in items.items():
        store.add([str(it.image) for it in its], read_image, src)
    # seed-tile candidates: the first images of every source, in seed order, per fold
    store.tile_keys = {}
    return store


def add_tiles(store: FeatureStore, seeds: list[Item]) -> None:
    m = store.m
    keys, tiles = [], []
    for it in seeds:
        k = str(it.image)
        if k in store.tile_keys:
            continue
        ts = seed_tiles(read_image(it.image), read_mask(it.mask), m)
        store.tile_keys[k] = [f"{k}#t{i}" for i in range(len(ts))]
        keys += store.tile_keys[k]
        tiles += ts
    if keys:
        lut = dict(zip(keys, tiles))
        import hashlib

        tag = hashlib.sha1("\n".join(keys).encode()).hexdigest()[:12]
        store.add(keys, lambda key: lut[key], f"tiles-{tag}")


def _mean_sd(vals: list[float]) -> str:
    return f"{np.mean(vals):.3f} ± {np.std(vals):.3f}"


def cross_validate(data: Path, folds: int, variants: list[str], cache: Path | None) -> dict:
    items = load_all(data)
    store = open_store(items, cache)
    fold_of = {src: group_folds(its, folds) for src, its in items.items()}
    results: dict = {v: [] for v in variants}
    for k in range(folds):
        train = {src: [it for j, f in enumerate(fl) if j != k for it in f] for src, fl in fold_of.items()}
        test = {src: fl[k] for src, fl in fold_of.items()}
        add_tiles(store, ordered(train["kvasir"])[:SEEDS["kvasir"]] + ordered(train["cvc"])[:SEEDS["cvc"]])
        for name in variants:
            v = VARIANTS[name]
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
            for who in ("model", "ungated", "ellipse", "all_foreground"):
                for met in ("dice", "jaccard"):
                    s[f"{src}_{who}_{met}"] = _mean_sd([r[src][who][met] for r in rs])
            s[f"{src}_called_polyp"] = _mean_sd([r[src]["called_polyp"] for r in rs])
        s["pg_neg_called_non_polyp"] = _mean_sd([r["pg_neg"]["called_non_polyp"] for r in rs])
        s["pg_pos_called_polyp"] = _mean_sd([r["pg_pos"]["called_polyp"] for r in rs])
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
        seeds = ordered(train["kvasir"])[:SEEDS["kvasir"]] + ordered(train["cvc"])[:SEEDS["cvc"]]
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


def build(data: Path, out: Path, cache: Path | None, variant: str = "agree") -> Path:
    """Fit on all the data and write the bundle (weights + manifest)."""
    import torch

    from rtseg.model.bundle import save_bundle

    items = load_all(data)
    store = open_store(items, cache)
    add_tiles(store, ordered(items["kvasir"])[:SEEDS["kvasir"]] + ordered(items["cvc"])[:SEEDS["cvc"]])
    v = VARIANTS[variant]
    f = fit(store, items, v, store.m)
    m = manifest(gate=v.gate, head=v.head, agree=v.agree)
    model = build_model(ARCH, pretrained=True, head=m.head).eval()
    set_classifier(model, f.w, f.b)
    if f.head is not None:
        model.rtseg_head.load_state_dict(f.head.state_dict())
    from rtseg.model.thresholds import ThresholdPolicy

    m = m.replace(threshold=ThresholdPolicy.parse(f"above {f.threshold}"), postprocess=tuple(f.steps),
                  training={"recipe": f"python -m rtseg.recipes.lite build --variant {variant}",
                            "backbone": "ImageNet efficientnet-lite1, frozen",
                            "variant": v.__dict__, **f.tune},
                  metrics={"tuning": {"baselines": {"ellipse": {"radius": f.radius}}}})
    bundle = Bundle(model, m)
    with torch.no_grad():
        save_bundle(bundle, out, half=True)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m rtseg.recipes.lite", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["cv", "classifier", "build"])
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--variants", default="default")
    ap.add_argument("--variant", default="agree", help="build: the shipped model is 'agree'")
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
