"""One fit of the recipe: its variants, the probe (classifier + head on a training selection),
the end-to-end step (:mod:`rtseg.recipes.distill.finetune`), then the call smoothing, the mask
threshold, clean-up and the constant ellipse's radius tuned on the same selection. Its data
(items, in-domain negative views, cached features) are :mod:`rtseg.recipes.distill.data`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from rtseg.errors import UserError
from rtseg.evaluate.metrics import image_scores
from rtseg.imageio import read_mask
from rtseg.model.active_area import Box
from rtseg.model.head import HeadConfig, SegHead
from rtseg.model.manifest import Manifest
from rtseg.model.postprocess import refine
from rtseg.recipes.distill.call_smoothing import CALL_FACTORS, VIDEO_SOURCES, best_factor, call_rates, clips
from rtseg.recipes.distill.data import (SIZE, FeatureStore, add_tiles, image_positives, manifest, ordered, rest_of,
                                        seeds_of)
from rtseg.recipes.layout import Item
from rtseg.train.probe import (TARGET, Cached, fit_classifier, fit_head, head_cams, head_maps, logits_of,
                               mask_target, pseudo_targets)
from rtseg.train.top import Top, retop

THRESHOLDS = tuple(round(float(t), 2) for t in np.arange(0.10, 0.76, 0.05))
STEPS = ((), ("largest",), ("largest", "fill"))
RADII = tuple(round(r, 3) for r in np.arange(0.10, 0.501, 0.025))


@dataclass
class Variant:
    """One set-up of the recipe; the kept ones differ only in the end-to-end step."""

    name: str
    finetune_steps: int = 0  # > 0: the probe fine-tuned end to end through augmented views (steps)


VARIANTS = {
    # the probe alone (the teacher): the classifier AND the head's most confident pixel call a
    # frame polyp; the head trained against every in-domain polyp-free frame; the video call
    # averaged across frames (factor by an inner CV); BKAI-IGH's frames as image-level positives
    "video-bkai": Variant("video-bkai"),
    # video-bkai whose network (blocks 7-20, classifier, head) is then fine-tuned end to end
    # through augmented views, the probe teaching the frames without a mask (rtseg.train.finetune)
    "finetune": Variant("finetune", finetune_steps=240),
}
DEFAULT_VARIANT = "finetune"  # the shipped model's (rtseg build-model)
C = 0.5  # the classifier's logistic-regression C
HEAD_EPOCHS = 30  # the head's epochs (its self-training round: a third, on at most 400 images)
POLYP_SOURCES = ("kvasir", "cvc", "pg_pos", "bkai")


def variant_named(name: str) -> Variant:
    """The variant called ``name``; an unknown name is one error line, not a traceback."""
    if name not in VARIANTS:
        raise UserError(f"unknown variant {name!r}; known: {', '.join(sorted(VARIANTS))}")
    return VARIANTS[name]


# --------------------------------------------------------------------------------------------
# one fit: classifier + head on a training selection
# --------------------------------------------------------------------------------------------
@dataclass
class Fit:
    w: np.ndarray
    b: float
    head: SegHead
    threshold: float
    steps: tuple[str, ...]
    radius: float
    tune: dict = field(default_factory=dict)
    top: Top | None = None  # the fine-tuned blocks of the backbone (Variant.finetune_steps), or ImageNet's
    call_smoothing: float = 0.0  # the video call's moving-average factor (manifest call_smoothing)
    size: int = SIZE  # the network's input size (the manifest's input_size) and the maps' size

    def view(self, c: Cached) -> Cached:
        """Cached ImageNet-backbone features as this fit's backbone computes them."""
        return c if self.top is None else retop(self.top, c, *_top_slots(self.top))


def _top_slots(top: Top) -> tuple[int, None, dict[int, int]]:
    """(index of the top's input block in Cached.feats, None, {later block the head reads: its
    index}): ``retop``'s arguments."""
    feats = list(manifest().head["features"])
    return feats.index(top.from_block), None, {b: k for k, b in enumerate(feats) if b > top.from_block}


def _truth_crop(mask: np.ndarray, box: Box, size: int) -> np.ndarray:
    return mask_target(mask, box, size) > 0.5


def maps_of(fit: Fit, c: Cached, gate: bool, agree: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(frame polyp probability [N], maps [N, S, S] in [0, 1], S = ``fit.size``) exactly as the bundle
    computes them (:func:`rtseg.model.head.decide`); the shipped frame rule is ``agree``."""
    import torch

    from rtseg.model.head import decide

    c = fit.view(c)
    z = torch.from_numpy(logits_of(c.gap, fit.w, fit.b))
    maps = torch.from_numpy(head_maps(fit.head, c, head_cams(c.head, fit.w), fit.size))
    prob, maps = decide(HeadConfig(gate=gate, agree=agree), z, maps)
    return prob.numpy(), maps.numpy()


def fit(store: FeatureStore, train: dict[str, list[Item]], v: Variant, m: Manifest,
        log=print, tune: bool = True, seeds: list[Item] | None = None) -> Fit:
    """Classifier + head on ``train``, then (``v.finetune_steps``) the network fine-tuned end to
    end; then (``tune``) the call smoothing (inner CV), the mask threshold, clean-up and the
    ellipse radius, all on ``train``. ``seeds``: the images whose masks are read (None:
    :func:`seeds_of` ``train``); no other mask is read, for training or for any choice."""
    kv, cvc = ordered(train["kvasir"]), ordered(train["cvc"])
    seeds = seeds_of(train) if seeds is None else seeds
    add_tiles(store, seeds)
    # the threshold, clean-up and ellipse radius are chosen on the seed masks too: held out as
    # whole hospitals, this scored within 0.002 Dice of a choice made on ~250 further masks
    tune_set = seeds
    pos_keys = [str(it.image) for it in kv + cvc + image_positives(train)]
    neg_keys, n_pg_neg = negatives(store, train, seeds)
    # 1. classifier
    c_pos, c_neg = store.get(pos_keys), store.get(neg_keys)
    gap = np.concatenate([c_pos.gap, c_neg.gap])
    y = np.r_[np.ones(len(pos_keys)), np.zeros(len(neg_keys))]
    w, b = fit_classifier(gap, y, C, sample_weight=np.ones(len(y)))
    # 2. head: seed masks + empty masks of negatives (+ own confident maps)
    head = fit_seg_head(store, train, m, (w, b), seeds, (neg_keys, n_pg_neg), log)
    f = Fit(w, b, head, 0.5, (), 0.25, size=m.input_size)
    if v.finetune_steps:
        from rtseg.recipes.distill.finetune import finetuned

        f = finetuned(store, train, v, m, f, seeds, log)
    if not tune:
        return f
    # 3. the video call's smoothing, then threshold, clean-up and the ellipse radius on the
    # training folds' tune set
    f.call_smoothing, smoothing = choose_call_smoothing(store, train, v, m, log)
    tc = store.get([str(it.image) for it in tune_set])
    _, maps = maps_of(f, tc, True, True)
    best = choose_threshold(maps, truth_crops(tune_set, tc, f.size))
    f.threshold, f.steps = best[1], best[2]
    # the constant ellipse's radius: relative to the frame, so chosen on the whole-frame
    # truth resized to S x S (the same search as rtseg.evaluate.baselines.choose_radius)
    from rtseg.evaluate.baselines import choose_radius

    whole = np.stack([_truth_crop(read_mask(it.mask), Box.full(read_mask(it.mask).shape), f.size)
                      for it in tune_set])
    f.radius, _ = choose_radius(whole, RADII)
    f.tune = {"dice": round(best[0], 4), "threshold": f.threshold, "postprocess": list(f.steps),
              "n_tune": len(tune_set), "n_pos": len(pos_keys), "n_neg": len(neg_keys),
              "n_tiles": len(neg_keys) - n_pg_neg, "ellipse_radius": f.radius,
              "call_smoothing": f.call_smoothing, "operating_point": {"call_smoothing": smoothing}}
    return f


def fit_seg_head(store, train: dict[str, list[Item]], m: Manifest, wb: tuple[np.ndarray, float],
                 seeds: list[Item], negs: tuple[list[str], int], log=print) -> SegHead:
    """The segmentation head of a fit: trained on the seed masks and empty masks of every
    in-domain polyp-free frame and as many seed tiles as seeds, then again with its own
    confident maps of the unlabeled polyp images (self-training)."""
    w, b = wb
    neg_keys, n_pg_neg = negs
    seed_c = store.get([str(it.image) for it in seeds])
    tg = np.stack([mask_target(read_mask(it.mask), bx) for it, bx in zip(seeds, seed_c.boxes)])
    rng = np.random.default_rng(0)
    tiles = neg_keys[n_pg_neg:]
    nk = neg_keys[:n_pg_neg] + list(rng.choice(tiles, size=min(len(tiles), len(seeds)), replace=False))
    neg_c = store.get(nk)
    cc = Cached.concat([seed_c, neg_c])
    tgt = np.concatenate([tg, np.zeros((len(nk), TARGET, TARGET), np.float32)])
    wgt = np.ones_like(tgt)
    cfg = HeadConfig(**{**m.head, "gate": True, "agree": True})
    head = SegHead(cfg)
    fit_head(head, cc, head_cams(cc.head, w), tgt, wgt, epochs=HEAD_EPOCHS, seed=0)
    un_keys = [str(it.image) for it in rest_of(train, seeds) + image_positives(train)]
    un_c = store.get(un_keys)
    pt, pw, keep = pseudo_targets(head_maps(head, un_c, head_cams(un_c.head, w)))
    keep &= logits_of(un_c.gap, w, b) > 0
    idx = np.flatnonzero(keep)
    if len(idx) > 400:
        idx = np.sort(np.random.default_rng(1).choice(idx, 400, replace=False))
    cc2 = Cached.concat([cc, un_c.take(idx)])
    tgt2 = np.concatenate([tgt, pt[idx]])
    wgt2 = np.concatenate([wgt, pw[idx] * 0.5])
    head = SegHead(cfg)
    fit_head(head, cc2, head_cams(cc2.head, w), tgt2, wgt2, epochs=max(2, HEAD_EPOCHS // 3), seed=1)
    log(f"    self-training: {len(idx)} of {len(un_keys)} unlabeled polyp images used "
        f"({int(keep.sum())} confident)")
    return head


def negatives(store: FeatureStore, train: dict[str, list[Item]], seeds: list[Item]) -> tuple[list[str], int]:
    """(every negative key: the in-domain polyp-free frames, then the seed tiles; how many of
    them are polyp-free frames) of a training selection."""
    neg_keys = [str(it.image) for it in train["pg_neg"]]
    tile_keys = [k for it in seeds for k in store.tile_keys.get(str(it.image), [])]
    return neg_keys + tile_keys, len(neg_keys)


def choose_threshold(maps: np.ndarray, truths: list[np.ndarray]) -> tuple[float, float, tuple[str, ...]]:
    """(mean Dice, threshold, clean-up) of the best (THRESHOLDS x STEPS) pair on these maps."""
    best = (-1.0, 0.5, ())
    for t in THRESHOLDS:
        pm = maps > t
        for steps in STEPS:
            d = np.mean([image_scores(refine(p, steps) if steps else p, tr)["dice"]
                         for p, tr in zip(pm, truths)])
            if d > best[0]:
                best = (float(d), t, steps)
    return best


def truth_crops(items: list[Item], c: Cached, size: int) -> list[np.ndarray]:
    """The masks of ``items`` in their network views (size x size bool), as the maps are."""
    return [_truth_crop(read_mask(it.mask), bx, size) for it, bx in zip(items, c.boxes)]


def inner_fits(store, train: dict[str, list[Item]], v: Variant, m: Manifest, inner: int = 2):
    """(fit, held-out selection) of each fold of an ``inner``-fold CV inside ``train`` (sequences
    never span two inner folds; untuned fits): what the call smoothing is chosen on."""
    from rtseg.recipes.layout import group_folds

    folds = {s: group_folds(its, inner, seed=1) for s, its in train.items()}
    v = dataclasses.replace(v, finetune_steps=0)  # the inner fits are probes: the end-to-end step costs minutes
    seeds = seeds_of(train)  # an inner fit reads the masks of the outer fit's seeds in its folds only
    for k in range(inner):
        tr = {s: [it for j, fl in enumerate(fs) if j != k for it in fl] for s, fs in folds.items()}
        inside = {str(it.image) for its in tr.values() for it in its}
        yield (fit(store, tr, v, m, log=lambda *_: None, tune=False,
                   seeds=[it for it in seeds if str(it.image) in inside]),
               {s: fs[k] for s, fs in folds.items()})


def clip_probs(f: Fit, store, items: list[Item]) -> list[tuple[list[Item], np.ndarray]]:
    """(clip, the frame rule's probability per frame) for every sequence among ``items``."""
    return [(clip, maps_of(f, store.get([str(it.image) for it in clip]), False, True)[0].astype(np.float32))
            for clip in clips(items)]


def choose_call_smoothing(store, train: dict[str, list[Item]], v: Variant, m: Manifest, log=print,
                          inner: int = 2) -> tuple[float, dict]:
    """The video call's smoothing factor (:mod:`rtseg.recipes.distill.call_smoothing`) by an
    ``inner``-fold CV inside ``train`` (sequences never span two inner folds)."""
    tot = {a: np.zeros(4, dtype=np.int64) for a in CALL_FACTORS}
    for f, held in inner_fits(store, train, v, m, inner):
        singles = [it for s in POLYP_SOURCES if s not in VIDEO_SOURCES for it in held.get(s, [])]
        n_pos = int((maps_of(f, store.get([str(it.image) for it in singles]), False, True)[0] > 0.5).sum()
                    ) if singles else 0
        rates = call_rates(n_pos, len(singles), clip_probs(f, store, held["cvc"]), clip_probs(f, store, held["pg_neg"]))
        for a, r in rates.items():
            tot[a] += np.asarray(r)
    best, table = best_factor(tot)
    log(f"    call smoothing (inner {inner}-fold CV): a = {best}: polyp {table[best][0]:.3f}, "
        f"polyp-free {table[best][1]:.3f} (a = 0: {table[0.0][0]:.3f} / {table[0.0][1]:.3f})")
    return best, {"inner_folds": inner, "table": {str(a): list(r) for a, r in table.items()}}
