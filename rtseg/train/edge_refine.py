"""Refinements of a probability map that follow the image's own edges.

    dense_crf   fully connected CRF (Krähenbühl & Koltun 2011, pydensecrf2): unary = the map,
                Gaussian + bilateral (RGB) pairwise terms, a few mean-field steps
    slic_pool   the map averaged inside each SLIC superpixel (scikit-image)

Too slow for every live frame on the CPU (40-90 ms per 224 x 224 view, measured by
``experiments/cam_refinement.py``); used there as per-frame ideas. Both need the
``experiments`` extra.
"""

from __future__ import annotations

import numpy as np


def view_of(image: np.ndarray, size: int) -> np.ndarray:
    """The network's view of an RGB image: its active area resized to ``size`` x ``size``."""
    import cv2

    from rtseg.model.active_area import prepare

    v, _ = prepare(image, True)
    return cv2.resize(v, (size, size), interpolation=cv2.INTER_AREA)


def dense_crf(view: np.ndarray, p: np.ndarray, w_bilateral: float, steps: int = 5) -> np.ndarray:
    """The CRF's polyp marginal [H, W] for the map ``p`` [H, W] on ``view`` [H, W, 3] uint8."""
    import pydensecrf.densecrf as dcrf

    h, w = p.shape
    q = np.clip(p, 1e-4, 1 - 1e-4).astype(np.float32)
    crf = dcrf.DenseCRF2D(w, h, 2)
    crf.setUnaryEnergy(np.ascontiguousarray(-np.log(np.stack([1 - q, q])).reshape(2, -1)))
    crf.addPairwiseGaussian(sxy=3, compat=3)
    crf.addPairwiseBilateral(sxy=40, srgb=13, rgbim=np.ascontiguousarray(view), compat=w_bilateral)
    return np.array(crf.inference(steps), np.float32)[1].reshape(h, w)


def slic_pool(view: np.ndarray, p: np.ndarray, n: int, blend: bool = False) -> np.ndarray:
    """``p`` averaged inside each of about ``n`` SLIC superpixels of ``view`` (``blend``: the
    mean of that and ``p``)."""
    from skimage.segmentation import slic

    seg = slic(view, n_segments=n, compactness=10, start_label=0, channel_axis=-1)
    k = int(seg.max()) + 1
    means = np.bincount(seg.ravel(), weights=p.ravel(), minlength=k) / np.maximum(
        np.bincount(seg.ravel(), minlength=k), 1)
    pooled = means[seg].astype(np.float32)
    return (pooled + p) / 2 if blend else pooled
