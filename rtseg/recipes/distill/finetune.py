"""The recipe's end-to-end step: the probe's network (frozen ImageNet backbone,
linear classifier, head) fine-tuned through augmented views (:mod:`rtseg.train.finetune`) on
a training selection, with the probe as the teacher of the frames that have no mask.

The result is a :class:`rtseg.recipes.distill.fit.Fit` whose ``top`` holds the fine-tuned blocks,
so the recipe's scoring, tuning and bundle see the fine-tuned network through the cached
features of block ``from_block`` (:func:`rtseg.train.top.retop`)."""

from __future__ import annotations

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


def samples(store, train: dict[str, list[Item]], v, f, seeds: list[Item]) -> list[list[Sample]]:
    """[seed images, polyp frames without mask, polyp-free views] of a training selection;
    ``f``: the probe's fit (the teacher)."""
    seed = []
    for it in seeds:
        view, box = view_of(it.image)
        seed.append(Sample(view, 1.0, mask_target(read_mask(it.mask), box, TARGET)))
    pos = rest_of(train, seeds) + image_positives(train)
    c = store.get([str(it.image) for it in pos])
    tgt, wgt = teacher_targets(head_maps(f.head, c, head_cams(c.head, f.w), TARGET))
    unlabeled = [Sample(view_of(it.image)[0], 1.0, t, w) for it, t, w in zip(pos, tgt, wgt)]
    neg = [Sample(view_of(it.image)[0], 0.0) for it in train["pg_neg"]]
    for it in seeds:  # the seed images' polyp-free tiles: close-up mucosa of every masked source
        neg += [Sample(small_view(t), 0.0) for t in seed_tiles(read_image(it.image), read_mask(it.mask))]
    return [seed, unlabeled, neg]


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
        f"without mask, {len(groups[2])} polyp-free views")
    st = finetune(model, m, groups, FinetuneConfig(steps=v.finetune_steps), log=log)
    w = st.fc.weight.detach()[0].numpy().copy()
    return dataclasses.replace(f, w=w, b=float(st.fc.bias.detach()), head=st.head, top=st.top)
