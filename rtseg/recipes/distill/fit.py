"""One fit of the recipe: its variants, the probe (classifier + head on a training selection),
the end-to-end step (:mod:`rtseg.recipes.distill.finetune`), then the call smoothing, the mask
threshold, clean-up and the constant ellipse's radius tuned on the same selection. Its data
(items, in-domain negative views, cached features) are :mod:`rtseg.recipes.distill.data`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from rtseg.model.active_area import Box
from rtseg.recipes.layout import Item
from rtseg.model.head import HeadConfig, SegHead
from rtseg.imageio import read_image, read_mask
from rtseg.evaluate.metrics import image_scores
from rtseg.errors import UserError
from rtseg.model.manifest import Manifest
from rtseg.model.postprocess import refine
from rtseg.recipes.distill.call_smoothing import CALL_FACTORS, VIDEO_SOURCES, best_factor, call_rates, clips
from rtseg.recipes.distill.data import (SIZE, FeatureStore, add_closeups, add_tiles, closeup_keys, image_positives,
                                        manifest, ordered, rest_of, seeds_of, tune_set_of)
from rtseg.train.probe import (TARGET, Cached, fit_classifier, fit_head, head_cams, head_maps, logits_of,
                               mask_target, pseudo_targets)
from rtseg.train.top import Top, finetune_top, retop

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
    head_all_pg_neg: bool = False  # the head's empty targets: every PolypGen polyp-free frame
    epochs: int = 30  # head epochs (self-training round: a third, on at most 400 images)
    inner_op: bool = False  # the frame rule's operating point chosen by an inner CV (training folds)
    pseudo_crf: float = 0.0  # > 0: self-training targets refined by a dense CRF (bilateral weight)
    closeups: int = 0  # close-up views (quadrants, centre) per polyp-free frame as extra negatives
    top_epochs: int = 0  # > 0: blocks 15-20 + conv_head fine-tuned with the classifier (epochs)
    head_seed: int = 0  # the head's initialisation and sample order (its self-training round: + 1)
    head_neg_weight: float = 1.0  # weight of the in-domain polyp-free frames' empty targets in the head's loss
    call_smoothing: bool = False  # the video call's moving average (CallSmoother) chosen by an inner CV
    bkai: bool = False  # BKAI-IGH NeoPolyp frames as image-level positives (and self-training images)
    finetune_steps: int = 0  # > 0: the network fine-tuned end to end through augmented views (steps)
    finetune_from: int = 6  # the blocks after this one are fine-tuned (a head feature block)
    bg_tiles: int = 0  # > 0: background tiles per polyp frame (teacher-sure mucosa) as fine-tuning negatives


VARIANTS = {
    "default": Variant(),
    "no-selftrain": Variant("no-selftrain", selftrain=False),
    "no-tiles": Variant("no-tiles", tiles=False),
    "crops": Variant("crops", crops=True),
    "no-pg-pos": Variant("no-pg-pos", pg_pos=False),
    "no-gate": Variant("no-gate", gate=False),
    # a frame is polyp only if the classifier and the head's most confident pixel agree
    # (PolypGen polyp-free frames called non-polyp 0.63 -> 0.87 by CV)
    "agree": Variant("agree", agree=True),
    "agree-flip": Variant("agree-flip", agree=True, flip=True),
    # as agree, the head trained against every in-domain polyp-free training frame (PolypGen
    # polyp-free frames called non-polyp 0.867 -> 0.887 by CV)
    "agree-allneg": Variant("agree-allneg", agree=True, head_all_pg_neg=True),
    "cam-only": Variant("cam-only", head=False, selftrain=False),
    # agree-allneg with the frame rule's operating point (classifier logit > t and head max > h)
    # chosen by a 2-fold cross-validation inside the training folds (no held-out image used)
    "agree-allneg-op": Variant("agree-allneg-op", agree=True, head_all_pg_neg=True, inner_op=True),
    # agree-allneg whose self-training targets are the head's maps refined by a dense CRF on the
    # image (the head learns the refinement: nothing extra runs per frame)
    "agree-allneg-crf": Variant("agree-allneg-crf", agree=True, head_all_pg_neg=True, pseudo_crf=3.0),
    # agree-allneg with close-ups of the training folds' polyp-free frames (2x zoom: centre and
    # quadrants of the active area) as negatives of the classifier and empty targets of the head
    "agree-allneg-zoom": Variant("agree-allneg-zoom", agree=True, head_all_pg_neg=True, closeups=5),
    "agree-allneg-zoom1": Variant("agree-allneg-zoom1", agree=True, head_all_pg_neg=True, closeups=1),
    # agree-allneg on a backbone whose top (blocks 15-20, conv_head, bn1's affine) is fine-tuned
    # with the classifier on the cached block-14 features (the rest stays ImageNet's, frozen)
    "agree-allneg-top": Variant("agree-allneg-top", agree=True, head_all_pg_neg=True, top_epochs=12),
    # agree-allneg-top with the frame rule's operating point chosen by the inner CV (each inner
    # fit fine-tunes its own top)
    "agree-allneg-top-op": Variant("agree-allneg-top-op", agree=True, head_all_pg_neg=True, top_epochs=12,
                                   inner_op=True),
    # agree-allneg with the polyp-free frames' empty targets weighted x3 in the head's loss
    "agree-allneg-hw3": Variant("agree-allneg-hw3", agree=True, head_all_pg_neg=True, head_neg_weight=3.0),
    # agree-allneg whose call on video is averaged across frames (rtseg.live.smoothing.CallSmoother),
    # the factor chosen by the inner CV (:mod:`rtseg.recipes.distill.call_smoothing`); single images unchanged
    "agree-allneg-video": Variant("agree-allneg-video", agree=True, head_all_pg_neg=True, call_smoothing=True),
    # agree-allneg-video with BKAI-IGH NeoPolyp's frames as image-level positives: a fifth
    # hospital's endoscope, light modes and small polyps
    "video-bkai": Variant("video-bkai", agree=True, head_all_pg_neg=True, call_smoothing=True, bkai=True),
    # video-bkai whose network (blocks 7-20, classifier, head) is then fine-tuned end to end
    # through augmented views, the probe teaching the frames without a mask (rtseg.train.finetune)
    "finetune": Variant("finetune", agree=True, head_all_pg_neg=True, call_smoothing=True, bkai=True,
                        finetune_steps=240),
    # finetune with up to two background tiles of every training polyp frame (where the teacher is
    # sure of mucosa) as negatives: polyp-free tissue of every source's endoscope
    "finetune-bg": Variant("finetune-bg", agree=True, head_all_pg_neg=True, call_smoothing=True, bkai=True,
                           finetune_steps=240, bg_tiles=2),
}
DEFAULT_VARIANT = "finetune"  # the shipped model's (rtseg build-model)
TOP_FROM = 14  # the top fine-tuned by top_epochs starts after this block (a head feature block)
# the operating points searched by the inner cross-validation (t: classifier logit; h: head max)
OP_SHIFTS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)
OP_AGREE = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)
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
    head: SegHead | None
    threshold: float
    steps: tuple[str, ...]
    radius: float
    tune: dict = field(default_factory=dict)
    shift: float = 0.0  # the classifier's operating point: a frame needs logit > shift
    agree_at: float = 0.5  # the head's: its max pixel > agree_at (HeadConfig.agree_at)
    top: Top | None = None  # the fine-tuned top of the backbone (Variant.top_epochs), or ImageNet's
    call_smoothing: float = 0.0  # the video call's moving-average factor (manifest call_smoothing)

    def view(self, c: Cached) -> Cached:
        """Cached ImageNet-backbone features as this fit's backbone computes them."""
        return c if self.top is None else retop(self.top, c, *_top_slots(self.top))


def _top_slots(top: Top) -> tuple[int, None, dict[int, int]]:
    """(index of the top's input block in Cached.feats, None, {later block the head reads: its
    index}): ``retop``'s arguments."""
    feats = list(manifest().head["features"])
    return feats.index(top.from_block), None, {b: k for k, b in enumerate(feats) if b > top.from_block}


class TopView:
    """A feature store seen through a fine-tuned top: ``get`` recomputes what the top changes."""

    def __init__(self, store: FeatureStore, top: Top) -> None:
        self.store, self.top = store, top

    def get(self, keys: list[str]) -> Cached:
        return retop(self.top, self.store.get(keys), *_top_slots(self.top))

    def __getattr__(self, name: str):
        return getattr(self.store, name)


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

    cfg = HeadConfig(gate=gate, agree=agree, agree_at=fit.agree_at)
    c = fit.view(c)
    flipped = fit.view(flipped) if flipped is not None else None
    z = torch.from_numpy(logits_of(c.gap, fit.w, fit.b - fit.shift))
    raw = head_cams(c.head, fit.w)
    if flipped is not None and fit.head is not None:
        zf = torch.from_numpy(logits_of(flipped.gap, fit.w, fit.b - fit.shift))
        mf = head_maps(fit.head, flipped, head_cams(flipped.head, fit.w), size)[:, :, ::-1]
        maps = torch.from_numpy((head_maps(fit.head, c, raw, size) + mf) / 2)
        return tuple(t.numpy() for t in decide(cfg, (z + zf) / 2, maps))
    if fit.head is None:
        maps = normalize_cam(torch.from_numpy(raw), size)
        prob = torch.sigmoid(z)
        if gate:
            maps = maps * (prob > 0.5).float().view(-1, 1, 1)
        return prob.numpy(), maps.numpy()
    maps = torch.from_numpy(head_maps(fit.head, c, raw, size))
    prob, maps = decide(cfg, z, maps)
    return prob.numpy(), maps.numpy()


def fit(store: FeatureStore, train: dict[str, list[Item]], v: Variant, m: Manifest,
        log=print, tune: bool = True) -> Fit:
    """Classifier + head on ``train``; then (``tune``) the frame rule's operating point (inner
    CV, ``v.inner_op``), the mask threshold, clean-up and the ellipse radius, all on ``train``."""
    kv, cvc = ordered(train["kvasir"]), ordered(train["cvc"])
    seeds = seeds_of(train)
    add_tiles(store, seeds)
    tune_set = tune_set_of(train)
    pos_keys = [str(it.image) for it in kv + cvc] + ([str(it.image) for it in image_positives(train, v.bkai)] if v.pg_pos else [])
    neg_keys, n_pg_neg, tile_keys, zoom_keys = negatives(store, train, v, seeds)
    # 1. classifier
    c_pos, c_neg = store.get(pos_keys), store.get(neg_keys)
    gap = np.concatenate([c_pos.gap, c_neg.gap])
    y = np.r_[np.ones(len(pos_keys)), np.zeros(len(neg_keys))]
    sw = np.ones(len(y))
    sw[len(pos_keys):len(pos_keys) + n_pg_neg] = v.neg_weight
    w, b = fit_classifier(gap, y, v.c, sample_weight=sw)
    base, top = store, None
    if v.top_epochs:  # the backbone's top and the classifier fine-tuned together, from the probe
        src = m.head["features"].index(TOP_FROM)
        top, w, b = finetune_top(store.model, np.concatenate([c_pos.feats[src], c_neg.feats[src]]), y,
                                 w, b, TOP_FROM, epochs=v.top_epochs)
        store = TopView(store, top)
    # 2. head: seed masks + empty masks of negatives (+ own confident maps)
    head = fit_seg_head(store, train, v, m, (w, b), seeds, (neg_keys, n_pg_neg, zoom_keys), log) if v.head else None
    f = Fit(w, b, head, 0.5, (), 0.25, top=top)
    if v.finetune_steps and head is not None:
        from rtseg.recipes.distill.finetune import finetuned

        f = finetuned(base, train, v, m, f, seeds, log)
    if not tune:
        return f
    # 3. the frame rule's operating point, then threshold, clean-up and the ellipse radius on
    # the training folds' tune set
    op = {}
    if v.inner_op and head is not None and v.agree:
        f.shift, f.agree_at, op = choose_operating_point(base, train, v, m, log)
    if v.call_smoothing:
        f.call_smoothing, op["call_smoothing"] = choose_call_smoothing(base, train, v, m, log)
    tc = base.get([str(it.image) for it in tune_set])
    _, maps = maps_of(f, tc, SIZE, v.gate, v.agree, flipped_of(base, tune_set, v))
    best = choose_threshold(maps, truth_crops(tune_set, tc))
    f.threshold, f.steps = best[1], best[2]
    # the constant ellipse's radius: relative to the frame, so chosen on the whole-frame
    # truth resized to S x S (the same search as rtseg.evaluate.baselines.choose_radius)
    from rtseg.evaluate.baselines import choose_radius

    whole = np.stack([_truth_crop(read_mask(it.mask), Box.full(read_mask(it.mask).shape), SIZE)
                      for it in tune_set])
    f.radius, _ = choose_radius(whole, RADII)
    f.tune = {"dice": round(best[0], 4), "threshold": f.threshold, "postprocess": list(f.steps),
              "n_tune": len(tune_set), "n_pos": len(pos_keys), "n_neg": len(neg_keys),
              "n_tiles": len(tile_keys), "n_closeups": len(zoom_keys), "ellipse_radius": f.radius,
              "shift": f.shift, "agree_at": f.agree_at, "call_smoothing": f.call_smoothing,
              **({"operating_point": op} if op else {})}
    return f


def fit_seg_head(store, train: dict[str, list[Item]], v: Variant, m: Manifest, wb: tuple[np.ndarray, float],
                 seeds: list[Item], negs: tuple[list[str], int, list[str]], log=print) -> SegHead:
    """The segmentation head of a fit: trained on the seed masks and empty masks of negatives,
    then (``v.selftrain``) again with its own confident maps of the unlabeled polyp images."""
    w, b = wb
    neg_keys, n_pg_neg, zoom_keys = negs
    seed_c = store.get([str(it.image) for it in seeds])
    tg = np.stack([mask_target(read_mask(it.mask), bx) for it, bx in zip(seeds, seed_c.boxes)])
    rng = np.random.default_rng(0)
    if v.head_all_pg_neg:  # every in-domain polyp-free frame + a sample of the other negatives
        zs = set(zoom_keys)
        others = [k for k in neg_keys[n_pg_neg:] if k not in zs]
        nk = neg_keys[:n_pg_neg] + list(rng.choice(others, size=min(len(others), len(seeds)),
                                                   replace=False))
        if zoom_keys:  # + as many close-ups as frames (the head's cost grows by that)
            nk += list(rng.choice(zoom_keys, size=min(len(zoom_keys), n_pg_neg), replace=False))
    else:
        nk = list(rng.choice(neg_keys, size=min(len(neg_keys), 3 * len(seeds)), replace=False))
    neg_c = store.get(nk)
    cc = Cached.concat([seed_c, neg_c])
    tgt = np.concatenate([tg, np.zeros((len(nk), TARGET, TARGET), np.float32)])
    wgt = np.ones_like(tgt)
    if v.head_all_pg_neg:  # the polyp-free frames lead nk
        wgt[len(seeds):len(seeds) + n_pg_neg] = v.head_neg_weight
    head = SegHead(HeadConfig(**{**m.head, "gate": v.gate, "agree": v.agree}))
    fit_head(head, cc, head_cams(cc.head, w), tgt, wgt, epochs=v.epochs, seed=v.head_seed)
    if v.selftrain:
        un_keys = [str(it.image) for it in rest_of(train) + (image_positives(train, v.bkai) if v.pg_pos else [])]
        un_c = store.get(un_keys)
        un_raw = head_cams(un_c.head, w)
        pt, pw, keep = pseudo_targets(head_maps(head, un_c, un_raw))
        keep &= logits_of(un_c.gap, w, b) > 0
        idx = np.flatnonzero(keep)
        if len(idx) > 400:
            idx = np.sort(np.random.default_rng(1).choice(idx, 400, replace=False))
        if v.pseudo_crf > 0:
            sub = un_c.take(idx)
            fine = crf_maps([un_keys[i] for i in idx], head_maps(head, sub, un_raw[idx], SIZE),
                            v.pseudo_crf)
            pt[idx], pw[idx], _ = pseudo_targets(fine)
        cc2 = Cached.concat([cc, un_c.take(idx)])
        tgt2 = np.concatenate([tgt, pt[idx]])
        wgt2 = np.concatenate([wgt, pw[idx] * 0.5])
        head = SegHead(HeadConfig(**{**m.head, "gate": v.gate, "agree": v.agree}))
        fit_head(head, cc2, head_cams(cc2.head, w), tgt2, wgt2, epochs=max(2, v.epochs // 3),
                 seed=v.head_seed + 1)
        log(f"    self-training: {len(idx)} of {len(un_keys)} unlabeled polyp images used "
            f"({int(keep.sum())} confident)")
    return head


def negatives(store: FeatureStore, train: dict[str, list[Item]], v: Variant, seeds: list[Item]
              ) -> tuple[list[str], int, list[str], list[str]]:
    """(every negative key, how many of them lead as the in-domain polyp-free frames, the seed
    tiles' keys, the close-ups' keys) of a training selection for variant ``v``."""
    neg_keys = [str(it.image) for it in train["pg_neg"]]
    n_pg_neg = len(neg_keys)
    if v.crops:
        neg_keys += [str(it.image) for it in train["non_polyp"]]
    tile_keys = [k for it in seeds for k in store.tile_keys.get(str(it.image), [])] if v.tiles else []
    zoom_keys: list[str] = []
    if v.closeups:
        add_closeups(store, train["pg_neg"])
        zoom_keys = [k for k in closeup_keys(train["pg_neg"]) if int(k.rsplit("#z", 1)[1]) < v.closeups]
    return neg_keys + tile_keys + zoom_keys, n_pg_neg, tile_keys, zoom_keys


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


def truth_crops(items: list[Item], c: Cached) -> list[np.ndarray]:
    """The masks of ``items`` in their network views (S x S bool), as the maps are."""
    return [_truth_crop(read_mask(it.mask), bx, SIZE) for it, bx in zip(items, c.boxes)]


def frame_scores(f: Fit, c: Cached) -> tuple[np.ndarray, np.ndarray]:
    """(classifier logit before any shift, head's max pixel) of each image: the frame rule's inputs."""
    c = f.view(c)
    z = logits_of(c.gap, f.w, f.b)
    top = head_maps(f.head, c, head_cams(c.head, f.w)).reshape(len(c.gap), -1).max(1)
    return z, top


def inner_fits(store, train: dict[str, list[Item]], v: Variant, m: Manifest, inner: int = 2):
    """(fit, held-out selection) of each fold of an ``inner``-fold CV inside ``train`` (sequences
    never span two inner folds; untuned fits): what the operating point and the call smoothing
    are chosen on."""
    from rtseg.recipes.layout import group_folds

    folds = {s: group_folds(its, inner, seed=1) for s, its in train.items()}
    v = dataclasses.replace(v, finetune_steps=0)  # the inner fits are probes: the end-to-end step costs minutes
    for k in range(inner):
        tr = {s: [it for j, fl in enumerate(fs) if j != k for it in fl] for s, fs in folds.items()}
        yield fit(store, tr, v, m, log=lambda *_: None, tune=False), {s: fs[k] for s, fs in folds.items()}


def choose_operating_point(store: FeatureStore, train: dict[str, list[Item]], v: Variant,
                           m: Manifest, log=print, inner: int = 2) -> tuple[float, float, dict]:
    """The frame rule's operating point (logit > t and head max > h) by a ``inner``-fold CV
    inside ``train`` (sequences never span two inner folds): the pair of (OP_SHIFTS, OP_AGREE)
    that maximises min(polyp frames called polyp, polyp-free PolypGen frames called non-polyp)
    over the inner held-out folds; ties go to the smaller thresholds."""
    pos, neg = [], []
    for f, held in inner_fits(store, train, v, m, inner):
        for s in POLYP_SOURCES:
            if held.get(s):
                pos.append(frame_scores(f, store.get([str(it.image) for it in held[s]])))
        neg.append(frame_scores(f, store.get([str(it.image) for it in held["pg_neg"]])))
    zp, tp = (np.concatenate(a) for a in zip(*pos))
    zn, tn = (np.concatenate(a) for a in zip(*neg))
    best, table = None, {}
    for t in OP_SHIFTS:
        for h in OP_AGREE:
            rp = float(((zp > t) & (tp > h)).mean())
            rn = float(((zn <= t) | (tn <= h)).mean())
            table[f"{t}/{h}"] = (round(rp, 4), round(rn, 4))
            if best is None or min(rp, rn) > best[0] + 1e-9:
                best = (min(rp, rn), t, h)
    log(f"    operating point (inner {inner}-fold CV): logit > {best[1]}, head max > {best[2]}: "
        f"polyp {table[f'{best[1]}/{best[2]}'][0]:.3f}, polyp-free {table[f'{best[1]}/{best[2]}'][1]:.3f}")
    return best[1], best[2], {"inner_folds": inner, "polyp_called_polyp": table[f"{best[1]}/{best[2]}"][0],
                              "pg_neg_called_non_polyp": table[f"{best[1]}/{best[2]}"][1]}


def clip_probs(f: Fit, store, items: list[Item], agree: bool) -> list[tuple[list[Item], np.ndarray]]:
    """(clip, the frame rule's probability per frame) for every sequence among ``items``."""
    return [(clip, maps_of(f, store.get([str(it.image) for it in clip]), SIZE, False, agree)[0].astype(np.float32))
            for clip in clips(items)]


def choose_call_smoothing(store, train: dict[str, list[Item]], v: Variant, m: Manifest, log=print,
                          inner: int = 2) -> tuple[float, dict]:
    """The video call's smoothing factor (:mod:`rtseg.recipes.distill.call_smoothing`) by an ``inner``-fold CV
    inside ``train`` (sequences never span two inner folds)."""
    tot = {a: np.zeros(4, dtype=np.int64) for a in CALL_FACTORS}
    for f, held in inner_fits(store, train, v, m, inner):
        singles = [it for s in POLYP_SOURCES if s not in VIDEO_SOURCES for it in held.get(s, [])]
        n_pos = int((maps_of(f, store.get([str(it.image) for it in singles]), SIZE, False, v.agree)[0] > 0.5).sum()
                    ) if singles else 0
        rates = call_rates(n_pos, len(singles), clip_probs(f, store, held["cvc"], v.agree),
                           clip_probs(f, store, held["pg_neg"], v.agree))
        for a, r in rates.items():
            tot[a] += np.asarray(r)
    best, table = best_factor(tot)
    log(f"    call smoothing (inner {inner}-fold CV): a = {best}: polyp {table[best][0]:.3f}, "
        f"polyp-free {table[best][1]:.3f} (a = 0: {table[0.0][0]:.3f} / {table[0.0][1]:.3f})")
    return best, {"inner_folds": inner, "table": {str(a): list(r) for a, r in table.items()}}


def crf_maps(paths: list[str], maps: np.ndarray, w_bilateral: float) -> np.ndarray:
    """The maps [N, S, S] of these images refined by a dense CRF on their network views, at the
    head's target resolution [N, TARGET, TARGET] (``rtseg.train.edge_refine``)."""
    import cv2

    from rtseg.train.edge_refine import dense_crf, view_of

    out = np.empty((len(paths), TARGET, TARGET), np.float32)
    for i, (path, p) in enumerate(zip(paths, maps)):
        fine = dense_crf(view_of(read_image(path), maps.shape[-1]), p, w_bilateral)
        out[i] = cv2.resize(fine, (TARGET, TARGET), interpolation=cv2.INTER_AREA)
    return out


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
