"""Pictures of results, drawn with OpenCV only: heat-map overlays and a Figure-2 grid.

- :func:`heatmap_overlay`: a CAM in [0, 1] as a JET colour map blended over the image;
- :func:`figure_grid`: one row per example with the columns of the paper's Figure 2
  (image, ground truth, heat map, mask), a title row, and an optional note per row;
- :func:`write_png`: atomic PNG output of an RGB image.

All images here are RGB uint8 ``[H, W, 3]``; conversion to BGR happens only when writing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np


COLUMNS = ("image", "ground truth", "heat map", "mask")


def colorize_cam(cam: np.ndarray, hw: tuple[int, int] | None = None) -> np.ndarray:
    """JET colour map (RGB uint8) of a CAM in [0, 1], resized (bilinear) to ``hw`` if given."""
    c = np.asarray(cam, dtype=np.float32)
    if hw is not None and c.shape[:2] != tuple(hw):
        c = cv2.resize(c, (int(hw[1]), int(hw[0])), interpolation=cv2.INTER_LINEAR)
    u8 = np.clip(np.rint(np.clip(c, 0.0, 1.0) * 255.0), 0, 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(u8, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def heatmap_overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The CAM's JET colour map blended over ``image`` (RGB uint8), at the image's size."""
    heat = colorize_cam(cam, image.shape[:2])
    return cv2.addWeighted(image, 1.0 - alpha, heat, alpha, 0.0)


def mask_to_rgb(mask: np.ndarray) -> np.ndarray:
    """A bool mask as a white-on-black RGB image."""
    g = np.asarray(mask, dtype=bool).astype(np.uint8) * 255
    return np.repeat(g[..., None], 3, axis=2)


def letterbox(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Fit ``image`` into a (H, W) cell keeping its aspect ratio; black padding."""
    h, w = size
    ih, iw = image.shape[:2]
    s = min(h / ih, w / iw)
    nh, nw = max(1, int(round(ih * s))), max(1, int(round(iw * s)))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    small = cv2.resize(image, (nw, nh), interpolation=interp)
    out = np.zeros((h, w, 3), np.uint8)
    y, x = (h - nh) // 2, (w - nw) // 2
    out[y:y + nh, x:x + nw] = small
    return out


def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float,
          color=(255, 255, 255)) -> None:
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1, cv2.LINE_AA)


@dataclass
class FigureRow:
    """One example: RGB image, truth mask (bool, or None), CAM in [0, 1], predicted mask."""

    image: np.ndarray
    truth: np.ndarray | None
    cam: np.ndarray
    mask: np.ndarray
    note: str = ""  # e.g. "Dice 0.42", written on the mask cell


def figure_grid(rows: Sequence[FigureRow], cell: tuple[int, int] = (180, 240), gap: int = 4,
                columns: Sequence[str] = COLUMNS) -> np.ndarray:
    """A grid like the paper's Figure 2: columns image, ground truth, heat map, mask (RGB)."""
    if not rows:
        raise ValueError("a figure needs at least one row")
    ch, cw = cell
    title_h = 28
    ncol = len(columns)
    H = title_h + len(rows) * (ch + gap)
    W = ncol * cw + (ncol - 1) * gap
    out = np.full((H, W, 3), 255, np.uint8)
    for j, name in enumerate(columns):
        x = j * (cw + gap)
        (tw, _), _ = cv2.getTextSize(name, cv2.FONT_HERSHEY_SIMPLEX, 0.6, 1)
        cv2.putText(out, name, (x + max(0, (cw - tw) // 2), 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6,
                    (0, 0, 0), 1, cv2.LINE_AA)
    for i, r in enumerate(rows):
        hw = r.image.shape[:2]
        truth = r.truth if r.truth is not None else np.zeros(hw, bool)
        cells = [r.image, mask_to_rgb(truth), heatmap_overlay(r.image, r.cam), mask_to_rgb(r.mask)]
        y = title_h + i * (ch + gap)
        for j, im in enumerate(cells[:ncol]):
            x = j * (cw + gap)
            out[y:y + ch, x:x + cw] = letterbox(im, (ch, cw))
        if r.note:
            x = (ncol - 1) * (cw + gap)
            _text(out, r.note, (x + 6, y + ch - 8), 0.5, (255, 230, 0))
    return out


def write_png(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """Write an RGB (or single-channel) uint8 image atomically; the file name's extension
    picks the format (``.png`` expected; any format OpenCV writes works)."""
    from rtseg.imageio import write_image

    img = rgb if rgb.ndim == 2 else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    return write_image(path, img)


def write_figure(path: str | os.PathLike, rows: Sequence[FigureRow], **kwargs) -> Path:
    """:func:`figure_grid` written atomically as a PNG."""
    return write_png(path, figure_grid(rows, **kwargs))
