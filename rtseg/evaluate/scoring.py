"""``rtseg eval``: Medico 2021 scoring of a model's masks against truth masks.

Images are matched with masks by relative path and stem (:func:`rtseg.imageio.pair_images_masks`);
images without a mask are counted, named in a warning (the first few) and left out. Masks are
predicted exactly as ``rtseg predict`` does (:func:`rtseg.evaluate.predict.iter_predictions`: the
manifest's CAM layer and threshold unless overridden) and scored with :mod:`rtseg.evaluate.metrics`
(see there for the averaging and the empty-mask rule).

The result (:func:`evaluate`) is a dict whose first keys are exactly
``accuracy, jaccard, dice, f1, recall, precision, n_images`` (the Medico 2021 scorer's
columns, then the count), followed by ``reduction, zero_division, classification_accuracy,
n_polyp_images, n_missing_masks, missing_masks, n_unreadable, model, layer, threshold,
per_image``. ``classification_accuracy`` scores the polyp probability (called polyp: ``prob > 0.5``) against
"the truth mask is not empty" (every image with a non-empty mask is a polyp image).

After those come ``baselines`` and ``beats_baselines`` (unless ``baselines=False``): the
constant masks of :mod:`rtseg.evaluate.baselines` scored on the same truth masks with the same
reduction and zero_division, ``{"ellipse": {"radius", "radius_source", <six metrics>,
"n_images"}, "all_foreground": {<six metrics>, "n_images"}}``. The ellipse's radius is the one
``rtseg tune --write`` recorded in the manifest (``radius_source: "manifest"``), else 0.25
(``"default"``). ``beats_baselines`` is true when the model's Dice is above both baselines'.
Images without a truth mask (or with an unreadable one) score no baseline either.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from rtseg.evaluate.baselines import BaselineScorer, beats, manifest_radius
from rtseg.errors import UserError
from rtseg.evaluate.metrics import (DEFAULT_REDUCTION, DEFAULT_ZERO_DIVISION, METRIC_KEYS, MedicoScorer,
                           check_reduction, classification_accuracy, resize_nearest)
from rtseg.model.thresholds import ThresholdPolicy

MISSING_SHOWN = 5  # missing-mask names listed in the warning and the JSON


@dataclass
class EvalResult:
    metrics: dict  # see the module docstring
    rows: list = field(default_factory=list)  # rtseg.evaluate.figure.FigureRow, for --figure


def as_pairs(pairs: Iterable) -> list[tuple[Path, Path]]:
    """(image, mask) paths from ImageMaskPair objects or 2-tuples."""
    out = []
    for p in pairs:
        if hasattr(p, "image") and hasattr(p, "mask"):
            out.append((Path(p.image), Path(p.mask)))
        else:
            img, m = p
            out.append((Path(img), Path(m)))
    return out


def figure_indices(n: int, k: int) -> set[int]:
    """``k`` indices spread evenly over ``n`` items (first and last included)."""
    if k <= 0 or n <= 0:
        return set()
    return {int(round(v)) for v in np.linspace(0, n - 1, min(k, n))}


def missing_message(missing: Sequence[Path], masks_dir: str | os.PathLike | None = None) -> str:
    names = ", ".join(str(p) for p in missing[:MISSING_SHOWN])
    more = f" and {len(missing) - MISSING_SHOWN} more" if len(missing) > MISSING_SHOWN else ""
    where = f" in {masks_dir}" if masks_dir is not None else ""
    return (f"{len(missing)} image(s) have no mask{where} and are left out of the scores: "
            f"{names}{more}")


def run_eval(bundle, pairs: Iterable, layer: int | str | None = None,
             threshold: str | ThresholdPolicy | None = None,
             reduction: str = DEFAULT_REDUCTION, zero_division: float = DEFAULT_ZERO_DIVISION,
             batch_size: int = 16, figure_rows: int = 0, missing: Sequence[Path] = (),
             per_image: bool = True,
             progress: Callable[[int], None] | None = None,
             baselines: bool = True) -> EvalResult:
    """Predict and score every (image, mask) pair; keep ``figure_rows`` examples for a figure.

    ``missing`` (images without a mask) is only counted and listed in the result.
    ``baselines``: also score the constant masks on the same truth masks (module doc).
    ``progress(n)`` is called with the number of pairs handled since its last call.
    """
    from rtseg.evaluate.figure import FigureRow
    from rtseg.imageio import check_mask_size, read_mask
    from rtseg.evaluate.predict import iter_predictions, resolve_settings

    pairs = as_pairs(pairs)
    if not pairs:
        raise UserError("no image/mask pairs to evaluate")
    reduction = check_reduction(reduction)
    lay, policy = resolve_settings(bundle, layer, threshold)
    mask_of = {p: m for p, m in pairs}
    index_of = {p: i for i, (p, _) in enumerate(pairs)}
    keep = figure_indices(len(pairs), figure_rows)
    scorer = MedicoScorer(reduction, zero_division)
    radius, radius_source = manifest_radius(bundle.manifest)
    base = BaselineScorer(radius, reduction, zero_division) if baselines else None
    skipped: list[Path] = []
    probs, is_polyp, entries, rows = [], [], [], []
    for pred in iter_predictions(bundle, [p for p, _ in pairs], lay, policy, batch_size, skipped):
        mpath = mask_of[pred.path]
        try:
            truth = read_mask(mpath)
        except UserError:
            skipped.append(mpath)
            if progress is not None:
                progress(1)
            continue
        check_mask_size(truth, pred.image.shape, mpath, pred.path)
        s = scorer.add(pred.mask, truth)
        if base is not None:
            base.add(truth)
        probs.append(pred.prob)
        is_polyp.append(bool(truth.any()))
        if per_image:
            entries.append({"path": str(pred.path), "mask": str(mpath), "prob": pred.prob, **s})
        if index_of[pred.path] in keep:
            rows.append(FigureRow(pred.image, truth, pred.cam,
                                  resize_nearest(pred.mask, truth.shape),
                                  f"Dice {s['dice']:.2f}"))
        if progress is not None:
            progress(1)
    n_bad_images = len([p for p in skipped if p in mask_of])
    if progress is not None and n_bad_images:
        progress(n_bad_images)
    if skipped:
        names = ", ".join(str(p) for p in skipped[:MISSING_SHOWN])
        more = f" and {len(skipped) - MISSING_SHOWN} more" if len(skipped) > MISSING_SHOWN else ""
        warnings.warn(f"skipped {len(skipped)} unreadable image/mask file(s): {names}{more}",
                      stacklevel=2)
    if scorer.n_images == 0:
        raise UserError(f"none of the {len(pairs)} image/mask pairs could be read")
    metrics: dict = scorer.result()  # the six metrics, then n_images
    metrics.update({
        "reduction": reduction,
        "zero_division": float(zero_division),
        "classification_accuracy": classification_accuracy(probs, is_polyp),
        "n_polyp_images": int(sum(is_polyp)),
        "n_missing_masks": len(missing),
        "missing_masks": [str(p) for p in missing[:MISSING_SHOWN]],
        "n_unreadable": len(skipped),
        "model": str(bundle.path) if getattr(bundle, "path", None) else None,
        "layer": lay,
        "threshold": str(policy),
    })
    if per_image:
        metrics["per_image"] = entries
    if base is not None:
        b = base.result()
        b["ellipse"] = {"radius": radius, "radius_source": radius_source,
                        **{k: v for k, v in b["ellipse"].items() if k != "radius"}}
        metrics["baselines"] = b
        metrics["beats_baselines"] = beats(metrics["dice"], b)
    assert tuple(metrics)[:7] == METRIC_KEYS + ("n_images",)
    return EvalResult(metrics, rows)


def evaluate(bundle, pairs: Iterable, layer: int | str | None = None,
             threshold: str | ThresholdPolicy | None = None, **kwargs) -> dict:
    """Medico 2021 scores of ``bundle`` on ``pairs`` ((image, mask) paths): see the module doc."""
    return run_eval(bundle, pairs, layer, threshold, **kwargs).metrics


def evaluate_folders(bundle, images_dir: str | os.PathLike, masks_dir: str | os.PathLike,
                     **kwargs) -> EvalResult:
    """Pair ``images_dir`` with ``masks_dir`` by stem, warn about images without a mask, evaluate."""
    from rtseg.imageio import pair_images_masks

    pairs, missing = pair_images_masks(images_dir, masks_dir)
    if missing:
        warnings.warn(missing_message(missing, masks_dir), stacklevel=2)
    return run_eval(bundle, pairs, missing=missing, **kwargs)
