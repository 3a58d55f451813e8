"""The recipe's end-to-end step: the probe's network (frozen ImageNet backbone,
linear classifier, head) fine-tuned through augmented views (:mod:`rtseg.train.finetune`) on
a training selection, with the probe as the teacher of the frames that have no mask.

The result is a :class:`rtseg.recipes.distill.fit.Fit` whose ``top`` holds the fine-tuned blocks,
so the recipe's scoring, tuning and bundle see the fine-tuned network through the cached
features of block ``from_block`` (:func:`rtseg.train.top.retop`)."""

from __future__ import annotations

import cv2
import numpy as np

from rtseg.imageio import read_image, read_mask
from rtseg.model.active_area import Box, prepare
from rtseg.recipes.layout import Item
from rtseg.recipes.distill.data import image_positives, rest_of, seed_tiles
from rtseg.train.finetune import FinetuneConfig, Sample, finetune, small_view
from rtseg.train.probe import TARGET, head_cams, head_maps, mask_target

_VIEWS: dict[str, tuple[np.ndarray, Box]] = {}  # image path -> (small network view, its box): decoded once


def view_of(path) -> tuple[np.ndarray, Box]:
    key = str(path)
    if key not in _VIEWS:
        view, box = prepare(read_image(path), True)
        _VIEWS[key] = (small_view(view), box)
    return _VIEWS[key]


def teacher_targets(maps: np.ndarray, hi: float = 0.7, lo: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """(target, weight) from the teacher's maps of polyp frames: polyp where it is sure of
    polyp, mucosa where it is sure of none, the rest ignored."""
    return (maps > hi).astype(np.float32), ((maps > hi) | (maps < lo)).astype(np.float32)


def erased(view: np.ndarray, region: np.ndarray, grow: float = 0.05, seed: int = 0) -> np.ndarray | None:
    """``view`` with ``region`` (a [0, 1] map on any grid over the view; > 0.5 is in it) grown
    by ``grow`` of the view's longest side and covered by mucosa of the same frame: the region's
    pixels taken from elsewhere in the view (a shift whose source is lit and outside the region)
    and blended in by Poisson blending (OpenCV's seamlessClone), so texture, light and colour
    stay the frame's. None when no shift fits."""
    h, w = view.shape[:2]
    m = (cv2.resize(region.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) > 0.5).astype(np.uint8)
    r = max(1, round(grow * max(h, w)))
    m = cv2.dilate(m, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
    ys, xs = np.nonzero(m)
    if not len(ys):
        return None
    lit = view.max(axis=2) > 30
    rng = np.random.default_rng(seed)
    for _ in range(256):  # a shift whose source is lit (9 in 10 pixels) and outside the region
        dy, dx = int(rng.integers(-h + 1, h)), int(rng.integers(-w + 1, w))
        sy, sx = ys + dy, xs + dx
        if sy.min() < 0 or sx.min() < 0 or sy.max() >= h or sx.max() >= w:
            continue
        if lit[sy, sx].mean() >= 0.9 and not m[sy, sx].any():
            src = view.copy()
            src[ys, xs] = view[sy, sx]
            x, y, bw, bh = cv2.boundingRect(m)
            return cv2.seamlessClone(src, np.ascontiguousarray(view), m * 255, (x + bw // 2, y + bh // 2),
                                     cv2.NORMAL_CLONE)
    return None


def erasable(region: np.ndarray, peak: float, hi: float = 0.7, most: float = 0.3) -> bool:
    """A frame can be shown with its polyp erased when the polyp is found (``peak`` above
    ``hi``), covers at most ``most`` of the view (larger holes are mostly filler) and is one
    blob: where the map marks two places, a third, fainter polyp is likelier to be missed."""
    if not (peak > hi and 0.0 < float(region.mean()) <= most):
        return False
    return cv2.connectedComponents(region.astype(np.uint8))[0] == 2  # background + one blob


#: the teacher's map at or above this is erased with the polyp (its mucosa targets start below 0.2)
ERASE_FROM = 0.1


def samples(store, train: dict[str, list[Item]], v, f, seeds: list[Item]) -> list[list[Sample]]:
    """[seed images, polyp frames without mask, polyp-free views] of a training selection, and
    with ``v.erase`` [polyp frames with their polyp erased]; ``f``: the probe's fit (the teacher)."""
    seed, gone = [], []
    for it in seeds:
        view, box = view_of(it.image)
        t = mask_target(read_mask(it.mask), box, TARGET)
        seed.append(Sample(view, 1.0, t))
        if v.erase and erasable(t > 0, 1.0):
            gone.append(erased(view, (t > 0).astype(np.float32)))
    pos = rest_of(train, seeds) + image_positives(train)
    c = store.get([str(it.image) for it in pos])
    maps = head_maps(f.head, c, head_cams(c.head, f.w), TARGET)
    tgt, wgt = teacher_targets(maps)
    unlabeled = [Sample(view_of(it.image)[0], 1.0, t, w) for it, t, w in zip(pos, tgt, wgt)]
    if v.erase:  # everything the teacher is not sure is mucosa goes
        gone += [erased(s.view, (p >= ERASE_FROM).astype(np.float32), seed=i)
                 for i, (s, p) in enumerate(zip(unlabeled, maps)) if erasable(p >= ERASE_FROM, float(p.max()))]
    gone = [Sample(g, 0.0) for g in gone if g is not None]
    neg = [Sample(view_of(it.image)[0], 0.0) for it in train["pg_neg"]]
    for it in seeds:  # the seed images' polyp-free tiles: close-up mucosa of every masked source
        neg += [Sample(small_view(t), 0.0) for t in seed_tiles(read_image(it.image), read_mask(it.mask))]
    return [seed, unlabeled, neg] + ([gone] if v.erase else [])


def finetuned(store, train: dict[str, list[Item]], v, m, f, seeds: list[Item], log=print):
    """The probe's fit ``f`` fine-tuned end to end (``v.finetune_steps`` steps): a new Fit with
    the fine-tuned top, classifier and head."""
    import dataclasses

    from rtseg.model.bundle import build_model
    from rtseg.train.probe import set_classifier

    model = build_model(m.arch, pretrained=True, head=m.head).eval()
    set_classifier(model, f.w, f.b)
    model.rtseg_head.load_state_dict(f.head.state_dict())
    groups = samples(store, train, v, f, seeds)
    log(f"    fine-tuning end to end: {len(groups[0])} seed images, {len(groups[1])} polyp frames "
        f"without mask, {len(groups[2])} polyp-free views"
        + (f", {len(groups[3])} polyp frames with the polyp erased" if len(groups) > 3 else ""))
    cfg = FinetuneConfig(steps=v.finetune_steps, shares=(4, 8, 4, 4)[:len(groups)])
    st = finetune(model, m, groups, cfg, log=log)
    w = st.fc.weight.detach()[0].numpy().copy()
    return dataclasses.replace(f, w=w, b=float(st.fc.bias.detach()), head=st.head, top=st.top)
