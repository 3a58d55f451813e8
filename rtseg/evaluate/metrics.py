"""Medico 2021 segmentation scoring: accuracy, Jaccard, Dice, F1, recall, precision.

Follows the official MediaEval 2021 Medico scorer (``segmentation_evaluation.py`` in
github.com/multimediaeval/2021-Medico-Multimedia), which scores every image on its own with
scikit-learn's binary metrics and reports the mean over images.

Per image, from the pixel counts ``tp, fp, fn, tn`` of a predicted mask against the truth:

=========  ==================================  ==========================================
metric     definition                          when the denominator is 0
=========  ==================================  ==========================================
accuracy   (tp + tn) / (tp + fp + fn + tn)     never (a mask has at least one pixel)
jaccard    tp / (tp + fp + fn)                 truth and prediction both empty
dice       2 tp / (2 tp + fp + fn)             truth and prediction both empty
f1         same as dice (kept as its own key)  truth and prediction both empty
recall     tp / (tp + fn)                      truth empty
precision  tp / (tp + fp)                      prediction empty
=========  ==================================  ==========================================

Empty masks (the rule, stated once): a ratio whose denominator is 0 takes the value
``zero_division``, **default 0.0, as in the Medico 2021 scorer** (scikit-learn's
``zero_division="warn"`` acts as 0 and the scorer passes ``zero_division=0`` for precision).
So with the default:

- truth empty and prediction empty: accuracy = 1, every other metric = 0 (the scorer's own
  ``dice_score`` returns NaN there, which would turn the mean into NaN; rtseg gives 0, the
  value its F1 gets, so dice == f1 always holds);
- truth empty, prediction not: jaccard = dice = f1 = precision = 0 (tp = 0), recall = 0 (0/0);
- truth not empty, prediction empty: jaccard = dice = f1 = recall = 0 (tp = 0), precision = 0 (0/0).

With ``zero_division=1.0`` (scikit-learn's other convention) an empty prediction of an empty
truth scores 1 everywhere ("perfect"), and a 0/0 recall or precision in the one-empty cases
becomes 1 while jaccard/dice/f1 stay 0. The Medico 2021 test set has a polyp in every image,
so none of this changes its numbers; it matters for non-polyp images and empty predictions.

Averaging (``reduction``), as in segmentation_models.pytorch's metrics:

- ``"per-image"`` (default; the Medico 2021 scorer): compute every metric per image, then take
  the mean over images; every image counts the same, whatever its size;
- ``"micro"``: add ``tp, fp, fn, tn`` over all pixels of all images, then compute the ratios
  once; large images weigh more, and the empty-mask rule applies only if the whole set is empty.

Size mismatch: a prediction whose (H, W) differs from the truth's is resized to the truth's size
with nearest-neighbour interpolation before counting (the official scorer resizes the
prediction file bilinearly and re-thresholds at 0.5; for a 0/255 mask the two differ only on
the boundary). Non-bool inputs are binarised like the scorer reads files: divide by 255 if the
maximum is above 127, then ``> 0.5``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

METRIC_KEYS = ("accuracy", "jaccard", "dice", "f1", "recall", "precision")
REDUCTIONS = ("per-image", "micro")
DEFAULT_REDUCTION = "per-image"
DEFAULT_ZERO_DIVISION = 0.0


def as_bool_mask(mask) -> np.ndarray:
    """A 2-D bool mask from bool, 0/1 or 0/255 input (``[H, W]`` or ``[H, W, 1]``)."""
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[-1] == 1:
        m = m[..., 0]
    if m.ndim != 2:
        raise ValueError(f"a mask must be 2-D [H, W], got shape {list(m.shape)}")
    if m.dtype == bool:
        return m
    m = m.astype(np.float32)
    if m.size and m.max() > 127:
        m = m / 255.0
    return m > 0.5


def resize_nearest(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a bool mask to (H, W)."""
    import cv2

    if mask.shape == tuple(hw):
        return mask
    out = cv2.resize(mask.astype(np.uint8), (int(hw[1]), int(hw[0])),
                     interpolation=cv2.INTER_NEAREST)
    return out.astype(bool)


@dataclass(frozen=True)
class Confusion:
    """Pixel counts of one prediction (or a pooled set) against the truth."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    @classmethod
    def from_masks(cls, pred, truth) -> "Confusion":
        """Counts of ``pred`` against ``truth``; ``pred`` is resized (nearest) to the truth's size."""
        t = as_bool_mask(truth)
        p = resize_nearest(as_bool_mask(pred), t.shape)
        tp = int(np.count_nonzero(p & t))
        npred, ntrue = int(np.count_nonzero(p)), int(np.count_nonzero(t))
        fp, fn = npred - tp, ntrue - tp
        return cls(tp, fp, fn, int(t.size) - tp - fp - fn)

    def __add__(self, other: "Confusion") -> "Confusion":
        return Confusion(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn,
                         self.tn + other.tn)

    @property
    def n_pixels(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    def scores(self, zero_division: float = DEFAULT_ZERO_DIVISION) -> dict[str, float]:
        """The six metrics (keys :data:`METRIC_KEYS`); 0/0 ratios take ``zero_division``."""
        def ratio(num: float, den: float) -> float:
            return float(num) / float(den) if den else float(zero_division)

        tp, fp, fn, tn = self.tp, self.fp, self.fn, self.tn
        dice = ratio(2 * tp, 2 * tp + fp + fn)
        return {
            "accuracy": ratio(tp + tn, tp + fp + fn + tn),
            "jaccard": ratio(tp, tp + fp + fn),
            "dice": dice,
            "f1": dice,
            "recall": ratio(tp, tp + fn),
            "precision": ratio(tp, tp + fp),
        }


def confusion(pred, truth) -> Confusion:
    """Pixel counts of one prediction against its truth (see :meth:`Confusion.from_masks`)."""
    return Confusion.from_masks(pred, truth)


def image_scores(pred, truth, zero_division: float = DEFAULT_ZERO_DIVISION) -> dict[str, float]:
    """The six metrics of one predicted mask against its truth (Medico 2021 rules)."""
    return Confusion.from_masks(pred, truth).scores(zero_division)


def check_reduction(reduction: str) -> str:
    from rtseg.errors import UserError

    r = str(reduction).strip().lower().replace("_", "-")
    if r in ("per-image", "perimage", "image", "mean"):
        return "per-image"
    if r == "micro":
        return "micro"
    raise UserError(f"unknown reduction '{reduction}' (use per-image or micro)")


class MedicoScorer:
    """Accumulates images one at a time (no mask is kept) and reduces at the end.

    >>> s = MedicoScorer(); s.add(pred, truth); ...; s.result()["dice"]
    """

    def __init__(self, reduction: str = DEFAULT_REDUCTION,
                 zero_division: float = DEFAULT_ZERO_DIVISION) -> None:
        self.reduction = check_reduction(reduction)
        self.zero_division = float(zero_division)
        self.total = Confusion()
        self.per_image: list[dict[str, float]] = []

    def add(self, pred, truth) -> dict[str, float]:
        """Score one image; returns its own (per-image) metrics."""
        c = Confusion.from_masks(pred, truth)
        self.total = self.total + c
        s = c.scores(self.zero_division)
        self.per_image.append(s)
        return s

    @property
    def n_images(self) -> int:
        return len(self.per_image)

    def result(self) -> dict[str, float | int]:
        """The six metrics reduced over the images seen, then ``n_images``."""
        if not self.per_image:
            raise ValueError("no images to score")
        if self.reduction == "micro":
            out: dict = self.total.scores(self.zero_division)
        else:
            out = {k: float(np.mean([s[k] for s in self.per_image])) for k in METRIC_KEYS}
        out["n_images"] = self.n_images
        return out


def score(preds: Iterable, truths: Iterable, reduction: str = DEFAULT_REDUCTION,
          zero_division: float = DEFAULT_ZERO_DIVISION) -> dict[str, float | int]:
    """Medico 2021 scores of predicted masks against truth masks (paired in order).

    Returns ``{accuracy, jaccard, dice, f1, recall, precision, n_images}``.
    """
    preds, truths = list(preds), list(truths)
    if len(preds) != len(truths):
        raise ValueError(f"{len(preds)} predictions for {len(truths)} truth masks")
    s = MedicoScorer(reduction, zero_division)
    for p, t in zip(preds, truths):
        s.add(p, t)
    return s.result()


def classification_accuracy(probs: Sequence[float], truth: Sequence[bool]) -> float | None:
    """Share of images whose call (:func:`rtseg.model.call.is_polyp`) agrees with ``truth``
    (the image shows a polyp); None if empty."""
    from rtseg.model.call import is_polyp

    p = np.asarray(probs, dtype=np.float64)
    t = np.asarray(truth, dtype=bool)
    if p.size == 0:
        return None
    return float((is_polyp(p) == t).mean())
