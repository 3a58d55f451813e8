"""MPEG-7 edge histogram, as LIRE computes it (``EdgeHistogram`` / ``EdgeHistogramImplementation``).

80 values = 16 sub-images (4 x 4 grid, row-major) x 5 edge types, each quantised to 0..7.

Definition (LIRE, on the image it is given; :func:`rtseg.features.extract` first applies
LIRE's document-builder pre-scaling):

- grey level per pixel ``Y = int(219 * (0.299 R + 0.587 G + 0.114 B) / 256 + 16.5)``
  (a studio-range luma, 16..235, computed in Java doubles: reproduced bit for bit here);
- square blocks of side ``b = 2 * floor(int(sqrt(W * H / 1100)) / 2)`` (2 if that is 0), laid
  from the top-left corner; the right/bottom remainder narrower than a block is ignored;
- each block is cut into 4 quarters (top-left, top-right, bottom-left, bottom-right) whose mean
  grey levels are filtered with the MPEG-7 kernels vertical ``(1, -1, 1, -1)``, horizontal
  ``(1, 1, -1, -1)``, 45 degree ``(sqrt2, 0, 0, -sqrt2)``, 135 degree ``(0, sqrt2, -sqrt2, 0)`` and
  non-directional ``(2, -2, -2, 2)``; the largest absolute response names the block's edge type
  (ties go to the earlier kernel in that order) unless it is below 11 (no edge);
- a block belongs to sub-image ``(int(4 x / W), int(4 y / H))`` of its top-left corner (x, y);
- bin ``5 * sub + t`` (t: 0 vertical, 1 horizontal, 2 45 degree, 3 135 degree,
  4 non-directional) counts the sub-image's blocks of type t, divided by all its blocks;
- each bin is quantised to 3 bits with LIRE's per-type MPEG-7 tables: the value is the index of
  the first mid-point between consecutive reconstruction levels that is >= the bin (7 if none).

Deviation from LIRE: a sub-image that gets no block at all (only in extremely elongated or tiny
images) divides 0 by 0 in LIRE, which the quantiser then turns into 7 for all its bins; here
its bins are 0.

Input: RGB uint8 ``[H, W, 3]`` or grey uint8 ``[H, W]`` (taken as R = G = B), or a sequence
of them (the function then returns ``[N, 80]``).

This module also holds the small input helpers the other descriptor modules share.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import cv2
import numpy as np

from rtseg.errors import UserError

N_BINS = 80
THRESHOLD = 11.0  # LIRE's edge-strength threshold
NUM_BLOCK = 1100  # LIRE's target number of blocks (MPEG-7 "desired_num_of_blocks")

# LIRE's quantisation tables (MPEG-7 reconstruction levels), rows: vertical, horizontal,
# 45 degree, 135 degree, non-directional.
QUANT_TABLE = np.array([
    [0.010867, 0.057915, 0.099526, 0.144849, 0.195573, 0.260504, 0.358031, 0.530128],
    [0.012266, 0.069934, 0.125879, 0.182307, 0.243396, 0.314563, 0.411728, 0.564319],
    [0.004193, 0.025852, 0.046860, 0.068519, 0.093286, 0.123490, 0.161505, 0.228960],
    [0.004174, 0.025924, 0.046232, 0.067163, 0.089655, 0.115391, 0.151904, 0.217745],
    [0.006778, 0.051667, 0.108650, 0.166257, 0.224226, 0.285691, 0.356375, 0.450972],
], dtype=np.float64)
# Decision thresholds: mid-points of consecutive levels ([5, 7]); the 8th is 1.0 (always met).
_MIDPOINTS = (QUANT_TABLE[:, :7] + QUANT_TABLE[:, 1:]) / 2.0
_SQRT2 = math.sqrt(2.0)

# ---------------------------------------------------------------- shared input helpers


def check_image(image: np.ndarray, what: str = "image") -> np.ndarray:
    """Validate one image: uint8, ``[H, W]`` or ``[H, W, 3]``, non-empty; returns it C-contiguous."""
    if not isinstance(image, np.ndarray):
        raise UserError(f"{what} must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise UserError(f"{what} must be uint8, got {image.dtype}")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise UserError(f"{what} must be [H, W, 3] RGB or [H, W] grey, got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise UserError(f"{what} is empty (shape {image.shape})")
    return np.ascontiguousarray(image)


def is_single(images) -> bool:
    """True for one image array; False for a sequence of images (list, tuple, [N, H, W, 3])."""
    return isinstance(images, np.ndarray) and (
        images.ndim == 2 or (images.ndim == 3 and images.shape[2] == 3))


def dispatch(fn: Callable[[np.ndarray], np.ndarray], images, n: int) -> np.ndarray:
    """Apply a one-image descriptor to one image (-> ``[n]``) or to a batch (-> ``[N, n]``)."""
    if is_single(images):
        return fn(check_image(images))
    rows = [fn(check_image(im, f"image {i}")) for i, im in enumerate(images)]
    return np.stack(rows).astype(np.float32) if rows else np.zeros((0, n), np.float32)


# ---------------------------------------------------------------- grey level


_S_WEIGHTS = np.array([[299.0, 587.0, 114.0]], dtype=np.float32)
# At S = 299 R + 587 G + 114 B = 128000 the exact grey level is the integer 126, and Java's
# double arithmetic lands just below it (125) for some of those colours: they are recomputed
# the Java way. For every other S the exact formula and Java's agree (checked on all colours).
_S_EXACT = 128000.0


def java_luma(r, g, b) -> np.ndarray:
    """LIRE's ``getYfromRGB`` evaluated exactly as Java does (IEEE doubles, truncation)."""
    r, g, b = (np.asarray(c, np.float64) for c in (r, g, b))
    yy = (0.299 * r + 0.587 * g + 0.114 * b) / 256.0
    return np.trunc(219.0 * yy + 16.5).astype(np.uint8)


def grey_levels(image: np.ndarray) -> np.ndarray:
    """LIRE's edge-histogram grey level of every pixel, uint8 ``[H, W]``.

    ``floor((219 S + 4224000) / 256000)`` with ``S = 299 R + 587 G + 114 B`` (exact in float32
    and float64), which equals Java's double computation except at ``S = 128000``.
    """
    if image.ndim == 2:
        s = image.astype(np.float64) * 1000.0
    else:
        s = cv2.transform(image.astype(np.float32), _S_WEIGHTS).reshape(image.shape[:2])
    special = s == _S_EXACT
    t = s.astype(np.float64)
    t *= 219.0
    t += 4224000.0
    t /= 256000.0
    y = t.astype(np.uint8)  # truncation == floor (positive)
    if special.any():
        px = image[special] if image.ndim == 3 else np.repeat(image[special][:, None], 3, 1)
        y[special] = java_luma(px[:, 0], px[:, 1], px[:, 2])
    return y


# ---------------------------------------------------------------- descriptor


def block_size(width: int, height: int) -> int:
    a = int(math.sqrt((float(width) * float(height)) / NUM_BLOCK))
    b = int(math.floor(a / 2) * 2)
    return b if b > 0 else 2


def _edge_histogram_one(image: np.ndarray) -> np.ndarray:
    h_img, w_img = image.shape[:2]
    bs = block_size(w_img, h_img)
    half = bs >> 1
    nbx = w_img // bs
    nby = h_img // bs
    local = np.zeros(N_BINS, np.float64)
    if nbx > 0 and nby > 0:
        grey = grey_levels(image[: nby * bs, : nbx * bs])
        integral = cv2.integral(grey, sdepth=cv2.CV_32S)
        corners = integral[::half, ::half].astype(np.int64)
        cells = corners[1:, 1:] - corners[:-1, 1:] - corners[1:, :-1] + corners[:-1, :-1]
        div = 4.0 / float(bs * bs)
        a0 = cells[0::2, 0::2] * div  # top-left quarter
        a1 = cells[0::2, 1::2] * div  # top-right
        a2 = cells[1::2, 0::2] * div  # bottom-left
        a3 = cells[1::2, 1::2] * div  # bottom-right
        # Same operation order as LIRE (sum of average[k] * filter[e][k], k = 0..3).
        strengths = (
            np.abs(a0 * 1.0 + a1 * -1.0 + a2 * 1.0 + a3 * -1.0),  # vertical
            np.abs(a0 * 1.0 + a1 * 1.0 + a2 * -1.0 + a3 * -1.0),  # horizontal
            np.abs(a0 * _SQRT2 + a1 * 0.0 + a2 * 0.0 + a3 * -_SQRT2),  # 45 degree
            np.abs(a0 * 0.0 + a1 * _SQRT2 + a2 * -_SQRT2 + a3 * 0.0),  # 135 degree
            np.abs(a0 * 2.0 + a1 * -2.0 + a2 * -2.0 + a3 * 2.0),  # non-directional
        )
        e_max = strengths[0].copy()
        e_type = np.zeros(e_max.shape, np.int64)
        for t in range(1, 5):
            better = strengths[t] > e_max
            e_max[better] = strengths[t][better]
            e_type[better] = t
        sx = (4 * bs * np.arange(nbx)) // w_img
        sy = (4 * bs * np.arange(nby)) // h_img
        sub = (sy[:, None] * 4 + sx[None, :]).ravel()
        count_local = np.bincount(sub, minlength=16).astype(np.float64)
        edge = (e_max >= THRESHOLD).ravel()
        counts = np.bincount(sub[edge] * 5 + e_type.ravel()[edge], minlength=N_BINS)
        denom = np.repeat(count_local, 5)
        np.divide(counts, denom, out=local, where=denom > 0)
    kinds = np.arange(N_BINS) % 5
    quant = (local[:, None] > _MIDPOINTS[kinds]).sum(axis=1)
    return quant.astype(np.float32)


def edge_histogram(images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """LIRE's MPEG-7 edge histogram: float32 ``[80]`` (values 0..7), or ``[N, 80]`` for a batch."""
    return dispatch(_edge_histogram_one, images, N_BINS)
