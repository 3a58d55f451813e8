"""2 x 2 tiles (the paper's Run 1) and their names in labels CSVs.

A tile is named ``<image path>#t<i>``: ``t0`` top-left, ``t1`` top-right, ``t2`` bottom-left,
``t3`` bottom-right; the split is at ``H // 2`` and ``W // 2`` (the bottom/right tiles take the
extra row/column of an odd size). The one definition used by propagation, training and CAMs.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from rtseg.errors import UserError

TILE_RE = re.compile(r"^(?P<path>.*)#t(?P<tile>\d+)$")
TILE_NAMES = ("top-left", "top-right", "bottom-left", "bottom-right")


# ----------------------------------------------------------------------------------------
# tiles
# ----------------------------------------------------------------------------------------
def parse_tile_path(ref: str | os.PathLike) -> tuple[Path, int | None]:
    """``"dir/img.jpg#t2"`` -> ``(Path("dir/img.jpg"), 2)``; ``"img.jpg"`` -> ``(Path, None)``.

    Only a trailing ``#t<digit(s)>`` is a tile reference; a ``#`` elsewhere in a file name is
    kept. Tile indices other than 0..3 raise UserError.
    """
    text = os.fspath(ref)
    m = TILE_RE.match(text)
    if not m:
        return Path(text), None
    tile = int(m.group("tile"))
    if not 0 <= tile <= 3 or not m.group("path"):
        raise UserError(f"bad tile reference '{text}' (use IMAGE#t0..IMAGE#t3)")
    return Path(m.group("path")), tile


def tile_ref(path: str | os.PathLike, tile: int | None) -> str:
    """The inverse of :func:`parse_tile_path`."""
    return os.fspath(path) if tile is None else f"{os.fspath(path)}#t{int(tile)}"


def tile_box(height: int, width: int, tile: int) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of 2 x 2 tile ``tile``; the split is at ``H // 2`` and ``W // 2``."""
    if not 0 <= tile <= 3:
        raise UserError(f"tile index {tile} out of range (0..3)")
    h2, w2 = height // 2, width // 2
    y0, y1 = (0, h2) if tile < 2 else (h2, height)
    x0, x1 = (0, w2) if tile % 2 == 0 else (w2, width)
    return y0, y1, x0, x1


def crop_tile(image: np.ndarray, tile: int | None) -> np.ndarray:
    """Tile ``tile`` (0..3) of an image ``[H, W, ...]``, or the whole image for ``None``."""
    if tile is None:
        return image
    y0, y1, x0, x1 = tile_box(image.shape[0], image.shape[1], tile)
    return image[y0:y1, x0:x1]


def split_tiles(image: np.ndarray) -> list[np.ndarray]:
    """The four 2 x 2 tiles of an image: [top-left, top-right, bottom-left, bottom-right]."""
    return [crop_tile(image, t) for t in range(4)]


def tile_path(path: str | os.PathLike, index: int) -> str:
    """``"x.jpg"``, 2 -> ``"x.jpg#t2"``."""
    if index not in (0, 1, 2, 3):
        raise ValueError(f"tile index must be 0..3, got {index}")
    return tile_ref(path, index)
