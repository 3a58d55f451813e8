"""Test-time adaptation measured by the hold-out: each fold's model (``holdout --save-folds``)
run by the product on the source it never saw, as it is and with its BatchNorm statistics
re-estimated on that source's unlabeled frames (:mod:`rtseg.model.adapt`).

``python -m rtseg.recipes.distill adapt --data ../shared/data --folds-dir runs/folds/finetune --json adapt.json``

Per held-out source and mode (``none``: the fold's model; ``adabn``: the site's own statistics;
``align``: the site's features mapped onto the training frames' statistics), the same scores as
the hold-out (:mod:`rtseg.recipes.distill.holdout`), computed through the product's predictor
(:func:`rtseg.evaluate.predict.iter_predictions`, the mask every command makes) and, for video
sequences, the live loop's call smoothing. The adaptation frames are ``--adapt-frames`` frames
drawn at random from the held-out source (polyp and polyp-free alike, no label read); the
reference statistics come from frames of the training sources only.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from rtseg.model.call import is_polyp
from rtseg.recipes.layout import Item

MODES = ("none", "adabn", "align")
POLYP = ("kvasir", "cvc", "pg_pos", "bkai")


def network_input(bundle, items: list[Item]):
    """The network inputs of ``items`` as every command prepares them."""
    from rtseg.imageio import read_image
    from rtseg.model.preprocess import images_to_input, network_views

    views, _ = network_views([read_image(it.image) for it in items], bundle.manifest)
    return images_to_input(list(views), bundle.manifest, crop=False)


def sample(items: list[Item], n: int, seed: int) -> list[Item]:
    rng = np.random.default_rng(seed)
    return [items[i] for i in sorted(rng.choice(len(items), min(n, len(items)), replace=False))]


def adapted(bundle, mode: str, site: list[Item], reference_items: list[Item]):
    """A copy of ``bundle`` adapted to the ``site`` frames by ``mode``."""
    from rtseg.model.adapt import adapt, input_statistics

    if mode == "none":
        return bundle
    b = copy.deepcopy(bundle)
    ref = None
    if mode == "align":
        x = network_input(b, reference_items)
        ref = input_statistics(b.model, [x[i:i + 32] for i in range(0, len(x), 32)])
    adapt(b.model, network_input(b, site), ref)
    return b


def score(bundle, test: dict[str, list[Item]]) -> dict:
    """The hold-out's scores of a held-out source, through the product's predictor."""
    from rtseg.evaluate.metrics import image_scores
    from rtseg.evaluate.predict import iter_predictions
    from rtseg.imageio import read_mask
    from rtseg.recipes.distill.call_smoothing import VIDEO_SOURCES, clips, stream_calls

    everything = [it for s in (*POLYP, "pg_neg") for it in test.get(s, [])]
    pred = {str(p.path): (p.prob, p.mask) for p in iter_predictions(bundle, [it.image for it in everything])}
    a = float(bundle.manifest.call_smoothing or 0.0)
    vids = [(c, np.array([pred[str(it.image)][0] for it in c], np.float32))
            for s in VIDEO_SOURCES for c in clips(test.get(s, []))]
    shown = stream_calls(vids, a)
    out: dict = {}
    polyp = [it for s in POLYP for it in test.get(s, [])]
    if polyp:
        called = np.array([bool(is_polyp(pred[str(it.image)][0])) for it in polyp])
        stream = np.array([shown.get(str(it.image), z) for it, z in zip(polyp, called)])
        dice = [image_scores(pred[str(it.image)][1] if z else np.zeros_like(pred[str(it.image)][1]),
                             read_mask(it.mask))["dice"] for it, z in zip(polyp, called) if it.mask is not None]
        out["polyp"] = {"n": len(polyp), "dice": round(float(np.mean(dice)), 4) if dice else None,
                        "called_polyp": round(float(called.mean()), 4),
                        "stream_called_polyp": round(float(stream.mean()), 4)}
    neg = test.get("pg_neg", [])
    if neg:
        groups = np.array([it.group for it in neg])
        ok = np.array([not shown[str(it.image)] for it in neg])
        out["polyp_free"] = {"n": len(neg), "stream_called_non_polyp": round(float(ok.mean()), 4),
                             "stream_per_sequence": {g: round(float(ok[groups == g].mean()), 4)
                                                     for g in sorted(set(groups))}}
    return out


def score_folds(data: Path, folds: Path, modes=MODES, frames: int = 64, reference: int = 160,
                seed: int = 0, log=print, save=None) -> dict:
    """Every fold bundle under ``folds`` (one folder per held-out source) scored per mode."""
    from rtseg.errors import UserError
    from rtseg.model.bundle import load_bundle
    from rtseg.recipes.distill.data import load_all
    from rtseg.recipes.distill.holdout import HOSPITALS, split

    bad = [m for m in modes if m not in MODES]
    if bad:
        raise UserError(f"unknown mode {bad[0]!r}; known: {', '.join(MODES)}")
    dirs = [folds / h for h in HOSPITALS if (folds / h / "manifest.json").is_file()]
    if not dirs:
        raise UserError(f"{folds} holds no fold bundle (<source>/manifest.json, from holdout --save-folds)")
    items = load_all(data)
    res: dict = {"frames": frames, "reference": reference, "seed": seed, "per_source": {}}
    for d in dirs:
        h = d.name
        train, test = split(items, h, Path(data))
        site = sample([it for s in (*POLYP, "pg_neg") for it in test.get(s, [])], frames, seed)
        # the reference: training frames, an equal share of every training source that has frames
        srcs = [s for s in (*POLYP, "pg_neg") if train.get(s)]
        ref_items = [it for s in srcs for it in sample(train[s], reference // len(srcs), seed)]
        bundle = load_bundle(d)
        res["per_source"][h] = {}
        for mode in modes:
            r = res["per_source"][h][mode] = score(adapted(bundle, mode, site, ref_items), test)
            log(f"{h} [{mode}]: " + "; ".join(f"{k} {v}" for k, v in _flat(r).items()))
            if save is not None:
                save(res)
    return res


def _flat(r: dict) -> dict:
    out = {}
    if "polyp" in r:
        out.update({"Dice": r["polyp"]["dice"], "polyp called polyp": r["polyp"]["stream_called_polyp"]})
    if "polyp_free" in r:
        out["polyp-free called non-polyp"] = r["polyp_free"]["stream_called_non_polyp"]
    return out
