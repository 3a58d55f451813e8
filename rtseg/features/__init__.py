"""Global image features: the four LIRE descriptors of the MediaEval 2021 Medico paper.

226 values per image, float32, in this order (see :data:`FEATURE_SLICES`):

==================  =======  ======================================================
edge_histogram      0:80     MPEG-7 edge histogram, 16 sub-images x 5 edge types, 0..7
tamura              80:98    coarseness, contrast, 16 directionality bins (counts)
luminance_layout    98:162   8 x 8 linear-luminance thumbnail, 0..31
color_histogram     162:226  64-bin RGB histogram, max-normalised to 0..255
==================  =======  ======================================================

The descriptors are also usable one by one, on one image or a batch (they do not pre-scale)::

    from rtseg.features.edge_histogram import edge_histogram    # [80] or [N, 80]
    from rtseg.features.tamura import tamura                    # [18]
    from rtseg.features.luminance_layout import luminance_layout  # [64]
    from rtseg.features.color_histogram import color_histogram  # [64]

Each descriptor follows LIRE's Java source (GitHub dermotte/LIRE, master:
``net.semanticmetadata.lire.imageanalysis.features.global``); its module docstring gives the
definition, the LIRE quirks that are kept and the deviations. Before extraction, images get
LIRE's document-builder pre-scaling (:func:`lire_prescale`: ``GlobalDocumentBuilder`` scales
any image whose longer side exceeds ``DocumentBuilder.MAX_IMAGE_DIMENSION`` = 1024 down to
that size with ``ImageUtils.scaleImage``: bilinear, ``Math.round`` of the scaled sides).
That is ``ImageUtils`` as in LIRE's current master; older LIRE releases scaled with bicubic or
nearest-neighbour interpolation and truncated sides, so features from an old LIRE jar can differ
for images larger than 1024 pixels (and, through Tamura's 64-pixel thumbnail, for all).

Deviations from LIRE as a whole (details in the modules):

- luminance layout: LIRE's 32-vs-8 scale bug (it only sees the top-left corner) is fixed;
- edge histogram: an empty sub-image gives 0 instead of LIRE's 0/0 -> 7;
- images are decoded by OpenCV (libjpeg-turbo, EXIF orientation applied), not Java ImageIO,
  and resampled with OpenCV's/this package's bilinear, not Java2D's: pixel values can differ by
  a grey level here and there, which moves a quantised value now and then;
- Java's sRGB -> linear grey conversion (LittleCMS) is approximated by the exact sRGB formula.

The decoder never uses OpenCV's reduced-resolution JPEG decoding: LIRE resamples the full
image bilinearly (point sampling, no averaging), which a DCT-domain 1/2 or 1/4 decode cannot
reproduce, and the Kvasir-SEG images (longer side at most 1920) would need upsampling after it.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from rtseg.errors import UserError
from rtseg.features import cache as _cache
from rtseg.features.cache import FEATURES_VERSION, FeatureCache, default_cache_path, file_key
from rtseg.features.color_histogram import color_histogram as _color_histogram
from rtseg.features.edge_histogram import check_image, is_single
from rtseg.features.edge_histogram import edge_histogram as _edge_histogram
from rtseg.features.luminance_layout import luminance_layout as _luminance_layout
from rtseg.features.tamura import java_round
from rtseg.features.tamura import tamura as _tamura
from rtseg.imageio import try_read_image, warn_skipped

__all__ = [
    "FEATURE_SLICES", "FEATURE_NAMES", "N_FEATURES", "FEATURES_VERSION", "MAX_IMAGE_DIMENSION",
    "DEFAULT_WORKERS", "extract", "extract_one", "extract_paths", "lire_prescale",
    "FeatureCache", "default_cache_path", "file_key",
]

__version__ = FEATURES_VERSION
VERSION = FEATURES_VERSION

FEATURE_SLICES: dict[str, slice] = {
    "edge_histogram": slice(0, 80),
    "tamura": slice(80, 98),
    "luminance_layout": slice(98, 162),
    "color_histogram": slice(162, 226),
}
N_FEATURES = 226
FEATURE_NAMES: list[str] = (
    [f"edge_histogram_{i}" for i in range(80)]
    + ["tamura_coarseness", "tamura_contrast"] + [f"tamura_dir_{i}" for i in range(16)]
    + [f"luminance_layout_{i}" for i in range(64)]
    + [f"color_histogram_{i}" for i in range(64)]
)
assert len(FEATURE_NAMES) == N_FEATURES
assert _cache.N_FEATURES == N_FEATURES

MAX_IMAGE_DIMENSION = 1024  # LIRE DocumentBuilder.MAX_IMAGE_DIMENSION
DEFAULT_WORKERS = max(1, min(8, os.cpu_count() or 1))


def lire_prescale(image: np.ndarray, max_side: int = MAX_IMAGE_DIMENSION) -> np.ndarray:
    """LIRE's pre-scaling: an image whose longer side exceeds ``max_side`` is scaled down to it.

    ``ImageUtils.scaleImage``: factor ``max_side / W`` if ``W > H`` else ``max_side / H``,
    sides ``Math.round(side * factor)``, bilinear (pixel centres, no anti-aliasing).
    """
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image
    factor = max_side / float(w) if w > h else max_side / float(h)
    nw, nh = java_round(w * factor), java_round(h * factor)
    if not (factor < 1 and nw > 1 and nh > 1):
        return image
    return cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)


def extract_one(image: np.ndarray) -> np.ndarray:
    """The 226 features of one RGB uint8 ``[H, W, 3]`` image, float32 ``[226]``."""
    image = check_image(image)
    if image.ndim != 3:
        raise UserError(f"image must be RGB uint8 [H, W, 3], got shape {image.shape}")
    img = lire_prescale(image)
    out = np.empty(N_FEATURES, np.float32)
    out[FEATURE_SLICES["edge_histogram"]] = _edge_histogram(img)
    out[FEATURE_SLICES["tamura"]] = _tamura(img)
    out[FEATURE_SLICES["luminance_layout"]] = _luminance_layout(img)
    out[FEATURE_SLICES["color_histogram"]] = _color_histogram(img)
    return out


def extract(images: Sequence[np.ndarray]) -> np.ndarray:
    """Features of RGB uint8 images of any sizes: float32 ``[N, 226]``."""
    if is_single(images):
        images = [images]
    rows = [extract_one(im) for im in images]
    return np.stack(rows) if rows else np.zeros((0, N_FEATURES), np.float32)


def _features_of_file(path: Path) -> np.ndarray | None:
    img = try_read_image(path)
    return None if img is None else extract_one(img)


def extract_paths(paths: Sequence[str | os.PathLike], cache: FeatureCache | None = None,
                  progress: bool = False, workers: int = DEFAULT_WORKERS, mapper=None
                  ) -> tuple[np.ndarray, list[Path], list[Path]]:
    """Features of image files: (float32 ``[M, 226]``, paths read, unreadable paths skipped).

    Files are decoded with :mod:`rtseg.imageio` in a pool of ``workers`` threads (OpenCV and
    numpy release the GIL); rows follow the order of ``paths``. With a ``cache``, files whose
    (path, size, mtime) are in it are not decoded, new results are added to it and it is saved
    (atomically) at the end. Unreadable files are skipped with one warning. ``progress`` shows
    a rich progress bar. ``mapper(fn, paths)``: computes the files to do instead of the thread
    pool, returning ``fn(path)`` in order (:class:`rtseg.batch.features.RayMapper`: on Ray).
    """
    paths = [Path(p) for p in paths]
    n = len(paths)
    results: list[np.ndarray | None] = [None] * n
    keys = [file_key(p) for p in paths] if cache is not None else [None] * n
    todo = []
    for i in range(n):
        if cache is not None and keys[i] is not None:
            hit = cache.get(keys[i])
            if hit is not None:
                results[i] = hit
                continue
        todo.append(i)

    bar = None
    if progress and n:
        from rtseg.ui import started_bar

        bar, task = started_bar("features", n, n - len(todo))
    try:
        todo_paths = [paths[i] for i in todo]
        n_workers = max(1, min(int(workers), len(todo)))
        if mapper is not None:
            computed, pool = mapper(_features_of_file, todo_paths), None
        elif n_workers == 1:
            computed = map(_features_of_file, todo_paths)
            pool = None
        else:
            pool = ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="rtseg-features")
            computed = pool.map(_features_of_file, todo_paths)
        try:
            for i, vec in zip(todo, computed):
                results[i] = vec
                if vec is not None and cache is not None:
                    cache.put(keys[i], vec)
                if bar is not None:
                    bar.advance(task)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
    finally:
        if bar is not None:
            bar.stop()
        if cache is not None:
            cache.save()

    ok = [p for p, r in zip(paths, results) if r is not None]
    skipped = [p for p, r in zip(paths, results) if r is None]
    warn_skipped(skipped)
    feats = (np.stack([r for r in results if r is not None]).astype(np.float32, copy=False)
             if ok else np.zeros((0, N_FEATURES), np.float32))
    return feats, ok, skipped
