"""Choose a bundle's CAM layer, threshold policy and mask clean-up on validation data.

Every candidate layer's CAM comes from one forward and one backward pass per batch
(:func:`rtseg.cam.multi_layer_cams`); each (layer, policy, post-processing) combination is
then scored with the Medico 2021 per-image metrics against the truth masks, at the
network's input resolution (truth masks are resized to S x S with area averaging, then
thresholded at 0.5). The best combination by mean Dice is returned and can be written into
the bundle's manifest. Use validation images only: never the images you report as test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np
import torch

from rtseg.cam import multi_layer_cams
from rtseg.imageio import read_image, read_mask
from rtseg.metrics import image_scores
from rtseg.model import num_blocks
from rtseg.postprocess import refine
from rtseg.preprocess import images_to_input
from rtseg.thresholds import ThresholdPolicy

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

    @property
    def best(self) -> TuneRow:
        return self.rows[0]


def _truth_at(mask: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(mask.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA) > 0.5


def tune(bundle, pairs: Sequence[tuple], layers: Sequence[int | str] | None = None,
         policies: Sequence[str] = DEFAULT_POLICIES,
         steps_options: Sequence[tuple[str, ...]] = DEFAULT_STEPS,
         batch_size: int = 16, device: str = "cpu", progress: bool = False) -> TuneResult:
    """Score every (layer, policy, post-processing) on ``pairs`` of (image path, mask path)."""
    m = bundle.manifest
    layers = list(layers) if layers is not None else default_layers(m.arch)
    pols = [ThresholdPolicy.parse(p) for p in policies]
    S = m.input_size
    cams: dict = {layer: [] for layer in layers}
    truths: list[np.ndarray] = []
    model = bundle.model.to(device).eval()
    it = range(0, len(pairs), batch_size)
    if progress:
        from rich.progress import track

        it = track(it, description="CAMs of all layers")
    for i in it:
        chunk = pairs[i:i + batch_size]
        imgs = [read_image(p[0]) for p in chunk]
        truths += [_truth_at(read_mask(p[1]), S) for p in chunk]
        x = images_to_input(imgs, m).to(device)
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
    return TuneResult(rows, len(truth))


def apply_best(bundle, result: TuneResult, split_note: str = "") -> None:
    """Write the best combination into the bundle's manifest (the caller saves it)."""
    b = result.best
    m = bundle.manifest
    bundle.manifest = m.replace(
        cam_layer=b.layer, threshold=ThresholdPolicy.parse(b.threshold), postprocess=b.postprocess,
        metrics={**m.metrics, "tuning": {
            "n_images": result.n_images, "note": split_note,
            "best": {"layer": b.layer, "threshold": b.threshold, "postprocess": list(b.postprocess),
                     "dice": round(b.dice, 4), "jaccard": round(b.jaccard, 4)},
        }},
    )
