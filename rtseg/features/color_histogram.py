"""Simple colour histogram, as LIRE computes it by default (``SimpleColorHistogram``): 64 values.

Definition (LIRE defaults: RGB colour space, 64 bins, on the image it is given):

- each channel is quantised to 4 levels with ``Math.round(v / 85)`` (0..42 -> 0, 43..127 -> 1,
  128..212 -> 2, 213..255 -> 3: round-to-nearest of the 0/85/170/255 palette, so the outer
  levels are narrower than the inner ones);
- bin ``16 q(R) + 4 q(G) + q(B)`` counts the pixels;
- normalisation to the largest bin, in integers: ``bin * 255 / max`` (truncated), so the
  fullest bin is 255 and a flat image has one bin at 255 and the rest 0.

Deviations from LIRE: none.

Input: RGB uint8 ``[H, W, 3]`` or grey uint8 ``[H, W]`` (taken as R = G = B), or a sequence
of them (the function then returns ``[N, 64]``).
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from rtseg.features.edge_histogram import dispatch

N_BINS = 64
LEVELS = np.floor(np.arange(256) / 85.0 + 0.5).astype(np.uint8)  # Java Math.round(v / 85d)
# The same quantisation as uniform bins: round(v / 85) == floor((v + 42) / 85) for 0..255, so
# OpenCV's 3-D histogram with 4 bins over [-42, 298) per channel counts LIRE's 64 bins directly.
_RANGES = [-42, 298] * 3
assert np.array_equal(LEVELS, (np.arange(256) + 42) // 85)


def _color_histogram_one(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        q = LEVELS[image].astype(np.int64)
        counts = np.bincount((q * 21).ravel(), minlength=N_BINS)  # 16 q + 4 q + q
    elif image.shape[0] * image.shape[1] >= 1 << 24:  # calcHist counts in float32
        q = LEVELS[image].astype(np.int64)
        counts = np.bincount((q[..., 0] * 16 + q[..., 1] * 4 + q[..., 2]).ravel(), minlength=N_BINS)
    else:
        counts = cv2.calcHist([image], [0, 1, 2], None, [4, 4, 4], _RANGES)
        counts = np.rint(counts.ravel()).astype(np.int64)  # [r][g][b] -> 16 r + 4 g + b
    top = int(counts.max())
    return ((counts * 255) // top).astype(np.float32)


def color_histogram(images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """LIRE's simple RGB colour histogram: float32 ``[64]`` (0..255), or ``[N, 64]`` for a batch."""
    return dispatch(_color_histogram_one, images, N_BINS)
