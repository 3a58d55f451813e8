"""Tamura texture features, as LIRE computes them (``Tamura``): 18 values.

``[coarseness, contrast, directionality bin 0 .. 15]``.

Definition (LIRE, on the image it is given):

1. Grey: Java's ``ColorConvertOp`` to ``CS_GRAY``. Java's grey colour space is *linear*, so this
   is 8-bit linear-light luminance, ``round(255 * (0.2225 R' + 0.7169 G' + 0.0606 B'))`` with
   ``R' G' B'`` the sRGB-decoded channels and the Y row of the D50 sRGB ICC profile (see
   :func:`linear_grey`); a grey ``[H, W]`` input is taken as already being such a grey image
   (``CS_GRAY`` to ``CS_GRAY`` is the identity).
2. Downscale (``ImageUtils.scaleImage(img, 64)``): if the longer side exceeds 64, bilinear to
   ``(round(W s), round(H s))`` with ``s = 64 / longer side``; smaller images are kept.
3. On that grey image ``g`` (``w x h``, interior pixels ``1 <= x < w-1``, ``1 <= y < h-1``):

   - coarseness: LIRE's neighbourhood "average" for size k is the sum over a ``4^k x 4^k``
     window starting at ``(x - o, y - o)``, ``o = int(2^(k-1))``, divided by ``4^k`` (not by the
     window area), with clamped borders; per pixel k in {0, 1, 2} maximises the larger of the
     horizontal and vertical differences of the windows at ``x +- o`` / ``y +- o``, strictly
     increasing from 0, starting from k = 1. For k = 0 both windows are the pixel itself, so the
     difference is always 0: the choice is k = 2 where its difference beats k = 1's, else
     k = 1. Coarseness = ``sum 2^k / (w h)`` (divided by all pixels, not the interior ones).
   - contrast: ``sigma / (m4 / sigma^4)^(1/4)`` with ``sigma`` the population standard
     deviation and ``m4`` the *sum* (not the mean) of ``(g - mean)^4``; 0 if ``sigma`` is 0.
   - directionality: 3x3 Prewitt gradients; LIRE's ``deltaV`` is the x derivative and its
     ``deltaH`` the y derivative (its kernels are indexed ``[x][y]``). Each interior pixel adds 1
     to bin ``int((pi/2 + atan(deltaV / deltaH)) / 0.2)`` (bin width 3/15 rad, so bin 15 is only
     0.14 rad wide). Division by 0 follows Java: ``x/0 = +-inf`` (bin 15 for a positive x
     derivative, 0 for a negative one) and ``0/0 = NaN``, which Java's ``(int)`` turns into bin 0,
     so flat pixels count in bin 0. The bins are raw pixel counts (not normalised).

So vertical stripes (an x gradient only) fill bins 0 and 15, horizontal stripes bin 7 and
diagonal edges bins 3 and 11.

Deviations from LIRE: none in the arithmetic. The grey conversion uses the sRGB formula and
profile coefficients instead of Java's LittleCMS lookup tables, and the bilinear resampling is
this module's own (Java2D's pixel-centre convention); both can differ by one grey level.
"""

from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np

from rtseg.features.edge_histogram import dispatch

N_VALUES = 18
MAX_SIDE = 64  # LIRE's Tamura.MAX_IMG_HEIGHT
_BIN_WINDOW = 3.0 / 15.0

# ---------------------------------------------------------------- Java's linear grey


def _srgb_to_linear(v: np.ndarray) -> np.ndarray:
    c = v / 255.0
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


_LIN = _srgb_to_linear(np.arange(256, dtype=np.float64))
# Y row of the D50-adapted sRGB ICC profile (what Java's sRGB -> CS_GRAY conversion uses).
_Y_WEIGHTS = (0.2225, 0.7169, 0.0606)
_GREY_LUTS = tuple((255.0 * w * _LIN).astype(np.float64) for w in _Y_WEIGHTS)


def linear_grey(image: np.ndarray) -> np.ndarray:
    """Java ``ColorConvertOp`` sRGB -> ``CS_GRAY`` (linear luminance), uint8 of the same [H, W].

    A grey ``[H, W]`` input is returned unchanged (``CS_GRAY`` to ``CS_GRAY``).
    """
    if image.ndim == 2:
        return image
    y = _GREY_LUTS[0][image[..., 0]] + _GREY_LUTS[1][image[..., 1]] + _GREY_LUTS[2][image[..., 2]]
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def java_round(x: float) -> int:
    """Java ``Math.round(double)``."""
    return int(math.floor(x + 0.5))


def scaled_size(width: int, height: int, max_side: int) -> tuple[int, int] | None:
    """LIRE ``ImageUtils.scaleImage(img, max_side)`` target size, or None if it keeps the image."""
    w, h = float(width), float(height)
    factor = max_side / w if w > h else max_side / h
    nw, nh = java_round(w * factor), java_round(h * factor)
    if factor < 1 and nw > 1 and nh > 1:
        return nw, nh
    return None


def bilinear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (i0, i1) and weight of i1 for a pixel-centre bilinear resize n_in -> n_out."""
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    src = np.clip(src, 0.0, n_in - 1)
    i0 = np.floor(src).astype(np.int64)
    frac = src - i0
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, frac


def grey_thumbnail(image: np.ndarray, max_side: int = MAX_SIDE) -> np.ndarray:
    """LIRE's Tamura input: linear grey, bilinear-downscaled to ``max_side``; uint8 [h, w].

    Only the source pixels the bilinear taps touch are converted to grey.
    """
    size = scaled_size(image.shape[1], image.shape[0], max_side)
    if size is None:
        return linear_grey(image)
    x0, x1, fx = bilinear_taps(image.shape[1], size[0])
    y0, y1, fy = bilinear_taps(image.shape[0], size[1])
    rows = np.concatenate([y0, y1])
    cols = np.concatenate([x0, x1])
    g = linear_grey(image.take(rows, axis=0).take(cols, axis=1)).astype(np.float64)
    nh, nw = size[1], size[0]
    top, bottom = g[:nh], g[nh:]
    fy = fy[:, None]
    v = top * (1.0 - fy) + bottom * fy  # [nh, 2 nw]
    fx = fx[None, :]
    out = v[:, :nw] * (1.0 - fx) + v[:, nw:] * fx
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- the three features


def coarseness(g: np.ndarray) -> float:
    h, w = g.shape
    if w < 3 or h < 3:
        return 0.0
    lo, hi = 4, 16  # window starts reach x - 4, window ends x + 16 (exclusive)
    pad = np.pad(g, ((lo, hi), (lo, hi)), mode="edge")  # == LIRE's clamped coordinates
    integ = cv2.integral(pad, sdepth=cv2.CV_32S).astype(np.int64)
    ny, nx = h - 2, w - 2

    def window(size: int, dx: int, dy: int) -> np.ndarray:
        """Sum of the size x size window starting at (x + dx, y + dy), all interior (x, y)."""
        r0, c0 = 1 + dy + lo, 1 + dx + lo
        a = integ[r0:r0 + ny, c0:c0 + nx]
        b = integ[r0:r0 + ny, c0 + size:c0 + size + nx]
        c = integ[r0 + size:r0 + size + ny, c0:c0 + nx]
        d = integ[r0 + size:r0 + size + ny, c0 + size:c0 + size + nx]
        return d - b - c + a

    def best_diff(k: int) -> np.ndarray:
        o, size = 1 << (k - 1), 4 ** k
        horiz = np.abs(window(size, 0, -o) - window(size, -2 * o, -o))
        vert = np.abs(window(size, -o, 0) - window(size, -o, -2 * o))
        return np.maximum(horiz, vert)  # times 4^k: LIRE divides the sums by 4^k

    d1, d2 = best_diff(1), best_diff(2)
    n2 = int(np.count_nonzero(d2 > 4 * d1))  # d2 / 16 > d1 / 4
    total = 4.0 * n2 + 2.0 * (d1.size - n2)
    return (1.0 / (w * h)) * total


def contrast(g: np.ndarray) -> float:
    x = g.astype(np.float64)
    n = x.size
    mean = x.sum() / n
    d2 = x - mean
    d2 *= d2
    sigma = math.sqrt(d2.sum() / n)
    if sigma <= 0:
        return 0.0
    m4 = (d2 * d2).sum()
    alpha4 = m4 / sigma ** 4
    return sigma / alpha4 ** 0.25


def directionality(g: np.ndarray) -> np.ndarray:
    h, w = g.shape
    hist = np.zeros(16, np.float64)
    if w < 3 or h < 3:
        return hist
    x = g.astype(np.int32)
    # LIRE's deltaH: derivative along y; deltaV: along x (3x3 Prewitt, unnormalised).
    d_y = (x[2:, :-2] + x[2:, 1:-1] + x[2:, 2:]) - (x[:-2, :-2] + x[:-2, 1:-1] + x[:-2, 2:])
    d_x = (x[:-2, 2:] + x[1:-1, 2:] + x[2:, 2:]) - (x[:-2, :-2] + x[1:-1, :-2] + x[2:, :-2])
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (math.pi / 2 + np.arctan(d_x.astype(np.float64) / d_y.astype(np.float64))) / _BIN_WINDOW
    t[np.isnan(t)] = 0.0  # Java: (int) NaN == 0
    bins = t.astype(np.int64)
    hist += np.bincount(bins.ravel(), minlength=16)[:16]
    return hist


def _tamura_one(image: np.ndarray) -> np.ndarray:
    g = grey_thumbnail(image)
    out = np.empty(N_VALUES, np.float64)
    out[0] = coarseness(g)
    out[1] = contrast(g)
    out[2:] = directionality(g)
    return out.astype(np.float32)


def tamura(images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """LIRE's Tamura features: float32 ``[18]``, or ``[N, 18]`` for a batch."""
    return dispatch(_tamura_one, images, N_VALUES)
