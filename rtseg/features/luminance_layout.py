"""Luminance layout, as LIRE computes it (``LuminanceLayout``): 8 x 8 = 64 values in 0..31.

Definition (LIRE, on the image it is given):

1. Grey: Java's ``ColorConvertOp`` to ``CS_GRAY``, i.e. 8-bit *linear* luminance (the same
   conversion as Tamura's, :func:`rtseg.features.tamura.linear_grey`).
2. An 8 x 8 grey canvas is filled with white (255, the default colour of a Java2D graphics
   context) and the grey image is drawn onto it, aspect ratio kept, at size
   ``w = int(W / s)``, ``h = int(H / s)``, centred on the axis where it is narrower than 8
   (offset ``(8 - w) / 2``, integer division), else at 0. Java2D's default interpolation is
   nearest neighbour: canvas pixel ``x`` samples source column ``int((x - x0 + 0.5) W / w)``.
   So white stripes make a non-square image square (for a 4:3 image rows 0 and 7 are white).
3. Values ``floor(v / 8)``, row-major (``index = 8 y + x``).

Deviation from LIRE (an outright bug there): LIRE computes the drawing scale as
``s = max(W, H) / 32`` while its canvas is 8 x 8 (the side length was changed to 8 and the 32
left), so it draws a 32-pixel-wide image and keeps only its top-left quarter: the descriptor
sees the top-left corner of the image (a quarter of its width), and its own "white stripes to
make it square" only appear for images more than 4 times wider than tall. Here
``s = max(W, H) / 8``, so the whole image is seen, as LIRE documents. ``lire_bug_compatible=True``
reproduces LIRE's output exactly (apart from the grey-conversion rounding noted in
:mod:`rtseg.features.tamura`).

Input: RGB uint8 ``[H, W, 3]`` or grey uint8 ``[H, W]`` (already ``CS_GRAY``), or a sequence
of them (the function then returns ``[N, 64]``).
"""

from __future__ import annotations

from functools import partial
from typing import Sequence

import numpy as np

from rtseg.features.edge_histogram import dispatch
from rtseg.features.tamura import linear_grey

SIDE = 8
N_VALUES = SIDE * SIDE
_LIRE_DRAW_SIDE = 32  # the constant LIRE actually scales to


def _luminance_layout_one(image: np.ndarray, lire_bug_compatible: bool = False) -> np.ndarray:
    height, width = image.shape[:2]
    draw_side = _LIRE_DRAW_SIDE if lire_bug_compatible else SIDE
    scale = float(max(width, height)) / float(draw_side)
    w = int(width / scale)
    h = int(height / scale)
    x0 = (SIDE - w) // 2 if w < SIDE else 0
    y0 = (SIDE - h) // 2 if h < SIDE else 0
    canvas = np.full((SIDE, SIDE), 255, np.uint8)
    dx = np.arange(x0, min(SIDE, x0 + w))
    dy = np.arange(y0, min(SIDE, y0 + h))
    if dx.size and dy.size:
        sx = np.minimum(((dx - x0 + 0.5) * (width / w)).astype(np.int64), width - 1)
        sy = np.minimum(((dy - y0 + 0.5) * (height / h)).astype(np.int64), height - 1)
        samples = image.take(sy, axis=0).take(sx, axis=1)
        canvas[dy[0]:dy[-1] + 1, dx[0]:dx[-1] + 1] = linear_grey(samples)
    return (canvas >> 3).astype(np.float32).ravel()


def luminance_layout(images: np.ndarray | Sequence[np.ndarray], *,
                     lire_bug_compatible: bool = False) -> np.ndarray:
    """LIRE's luminance layout: float32 ``[64]`` (values 0..31), or ``[N, 64]`` for a batch.

    ``lire_bug_compatible=True`` keeps LIRE's 32-vs-8 scale bug (top-left corner only).
    """
    return dispatch(partial(_luminance_layout_one, lire_bug_compatible=lire_bug_compatible),
                    images, N_VALUES)
