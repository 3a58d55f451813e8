"""Choose a bundle's CAM layer, threshold policy and mask clean-up on validation data.

Every candidate layer's CAM comes from one forward and one backward pass per batch
(:func:`rtseg.model.gradcam.multi_layer_cams`); each (layer, policy, post-processing) combination is
then scored with the Medico 2021 per-image metrics against the truth masks, at the
network's input resolution (truth masks are resized to S x S with area averaging, then
thresholded at 0.5). The best combination by mean Dice is returned and can be written into
the bundle's manifest. Use validation images only: never the images you report as test.

The same truth masks also score the constant-mask baselines (:mod:`rtseg.evaluate.baselines`): the
centred ellipse with the radius of best mean Dice on these images, and the all-foreground
mask. ``TuneResult.beats_baselines`` says whether the best row's Dice is above both, and
:func:`apply_best` records the chosen radius so ``rtseg eval`` scores the same ellipse.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np
import torch

from rtseg.evaluate.baselines import DEFAULT_RADII, beats, choose_radius, rounded, score_baselines
from rtseg.model.gradcam import multi_layer_cams
from rtseg.imageio import check_mask_size, read_image, read_mask
from rtseg.evaluate.metrics import image_scores
from rtseg.model.arch import num_blocks
from rtseg.model.postprocess import refine
from rtseg.model.preprocess import images_to_input
from rtseg.model.thresholds import ThresholdPolicy

DEFAULT_POLICIES = tuple(
    [f"above {t:.2f}" for t in np.arange(0.15, 0.76, 0.05)] + ["otsu", "band 0.4 0.7"]
)
DEFAULT_STEPS: tuple[tuple[str, ...], ...] = ((), ("largest",), ("largest", "fill"))


def default_layers(arch: str) -> list[int | str]:
    n = num_blocks(arch)
    return list(range(max(0, n - 15), n)) + ["head"]


@dataclass
class TuneRow:
    layer: int | str
    threshold: str
    postprocess: tuple[str, ...]
    dice: float
    jaccard: float
    recall: float
    precision: float


@dataclass
class TuneResult:
    rows: list[TuneRow] = field(default_factory=list)  # sorted, best first
    n_images: int = 0
    baselines: dict | None = None  # rtseg.evaluate.baselines.score_baselines on the same truth masks

    @property
    def best(self) -> TuneRow:
        return self.rows[0]

    @property
    def beats_baselines(self) -> bool | None:
        """Whether the best row's Dice is above every baseline's (None without baselines)."""
        return None if self.baselines is None else beats(self.best.dice, self.baselines)


def _truth_at(mask: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(mask.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA) > 0.5


def tune(bundle, pairs: Sequence[tuple], layers: Sequence[int | str] | None = None,
         policies: Sequence[str] = DEFAULT_POLICIES,
         steps_options: Sequence[tuple[str, ...]] = DEFAULT_STEPS,
         batch_size: int = 16, device: str = "cpu", progress: bool = False,
         baseline_radii: Sequence[float] | None = DEFAULT_RADII) -> TuneResult:
    """Score every (layer, policy, post-processing) on ``pairs`` of (image path, mask path).

    The baselines are scored on the same S x S truth masks with the same per-image mean, the
    ellipse with the radius of ``baseline_radii`` of best mean Dice (None: no baselines).
    """
    from rtseg.model.gradcam import GradCAM
    from rtseg.model.preprocess import network_views

    m = bundle.manifest
    model = bundle.model.to(device).eval()
    head = getattr(model, "rtseg_head", None) is not None
    # a segmentation head was trained on its manifest layer's CAM: only that layer is scored
    layers = [m.cam_layer] if head else (list(layers) if layers is not None else default_layers(m.arch))
    pols = [ThresholdPolicy.parse(p) for p in policies]
    S = m.input_size
    cams: dict = {layer: [] for layer in layers}
    truths: list[np.ndarray] = []  # in the network's view (the active area, when cropped)
    full_truths: list[np.ndarray] = []  # the whole frame: what a constant mask is scored on
    it = range(0, len(pairs), batch_size)
    if progress:
        from rich.progress import track

        it = track(it, description="CAMs of all layers")
    for i in it:
        chunk = pairs[i:i + batch_size]
        images = [read_image(p[0]) for p in chunk]
        masks = [read_mask(p[1]) for p in chunk]
        for img, mk, (ip, mp) in zip(images, masks, chunk):
            check_mask_size(mk, img.shape, mp, ip)
        views, boxes = network_views(images, m)
        truths += [_truth_at(mk[b.y0:b.y1, b.x0:b.x1], S) for mk, b in zip(masks, boxes)]
        full_truths += [_truth_at(mk, S) for mk in masks]
        x = images_to_input(views, m, crop=False).to(device)
        if head:
            with GradCAM(model, m.cam_layer, m.arch) as cam_op:
                out = {m.cam_layer: cam_op(x)[1]}
        else:
            _, out = multi_layer_cams(model, x, layers, arch=m.arch)
        for layer in layers:
            cams[layer].append(out[layer].float().cpu().numpy())
    truth = np.stack(truths)
    rows = []
    for layer in layers:
        c = np.concatenate(cams[layer])
        for pol in pols:
            pred = np.asarray(pol.apply(c), bool)
            for steps in steps_options:
                pm = refine(pred, steps) if steps else pred
                sc = [image_scores(p, t) for p, t in zip(pm, truth)]
                mean = {k: float(np.mean([s[k] for s in sc])) for k in
                        ("dice", "jaccard", "recall", "precision")}
                rows.append(TuneRow(layer, str(pol), tuple(steps), **mean))
    rows.sort(key=lambda r: (-r.dice, -r.jaccard))
    baselines = None
    if baseline_radii is not None:
        whole = np.stack(full_truths)
        radius, _ = choose_radius(whole, baseline_radii)
        baselines = score_baselines(whole, radius)
    return TuneResult(rows, len(truth), baselines)


def apply_best(bundle, result: TuneResult, split_note: str = "") -> None:
    """Write the best combination into the bundle's manifest (the caller saves it).

    With baselines, ``metrics["tuning"]`` also gets ``baselines`` (the ellipse's chosen radius
    and both baselines' scores, rounded) and ``beats_baselines``.
    """
    b = result.best
    m = bundle.manifest
    tuning = {
        "n_images": result.n_images, "note": split_note,
        "best": {"layer": b.layer, "threshold": b.threshold, "postprocess": list(b.postprocess),
                 "dice": round(b.dice, 4), "jaccard": round(b.jaccard, 4)},
    }
    if result.baselines is not None:
        tuning["baselines"] = rounded(result.baselines)
        tuning["beats_baselines"] = result.beats_baselines
    bundle.manifest = m.replace(
        cam_layer=b.layer, threshold=ThresholdPolicy.parse(b.threshold), postprocess=b.postprocess,
        metrics={**m.metrics, "tuning": tuning},
    )
