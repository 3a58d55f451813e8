"""Image input: finding, reading and pairing images.

Conventions used across rtseg:
- images returned by :func:`read_image` are 8-bit, 3-channel **RGB** ``uint8 [H, W, 3]``;
- video frames (OpenCV capture) are **BGR**; the fused graph takes BGR frames;
- masks returned by :func:`read_mask` are ``bool [H, W]`` (Medico 2021 rule: grey level above
  127, i.e. value/255 > 0.5).

Grayscale, RGBA, 16-bit and EXIF-rotated files are normalised by OpenCV's ``IMREAD_COLOR``
(which applies the EXIF orientation, drops alpha and scales 16-bit down to 8-bit).
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np

from rtseg.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
CLASS_NAMES = ("non_polyp", "polyp")  # index = label id; "polyp" is the positive class


def natural_key(path: str | os.PathLike) -> list:
    """Sort key that puts ``2.png`` before ``10.png``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(path))]


def list_images(root: str | os.PathLike, what: str = "image folder") -> list[Path]:
    """All image files below ``root`` (recursive), in natural order.

    Raises UserError if ``root`` is missing, not a folder, or holds no image file.
    """
    root = Path(root)
    if not root.exists():
        raise UserError(f"{what} not found: {root}")
    if not root.is_dir():
        raise UserError(f"{what} is not a folder: {root}")
    files = [
        p for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not p.name.startswith(".")
    ]
    if not files:
        raise UserError(f"{what} holds no images ({', '.join(IMAGE_EXTENSIONS)}): {root}")
    return sorted(files, key=natural_key)


def decode_image(data: bytes | np.ndarray) -> np.ndarray | None:
    """Decode encoded image bytes to RGB uint8, or None if they are not a readable image."""
    buf = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray)) else data
    if buf.size == 0:
        return None
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if img is None or img.ndim != 3 or img.shape[0] == 0 or img.shape[1] == 0:
        return None
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read one image as RGB uint8 [H, W, 3]; raise UserError if it cannot be read."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise UserError(f"cannot read image {path}: {exc.strerror or exc}") from None
    img = decode_image(data)
    if img is None:
        raise UserError(f"not a readable image: {path}")
    return img


def try_read_image(path: str | os.PathLike) -> np.ndarray | None:
    """Like :func:`read_image` but returns None for an unreadable file."""
    try:
        return read_image(path)
    except UserError:
        return None


def warn_skipped(skipped: Sequence[str | os.PathLike], what: str = "image") -> None:
    """One warning naming every unreadable file that was skipped."""
    if skipped:
        names = ", ".join(str(p) for p in skipped[:10])
        more = f" and {len(skipped) - 10} more" if len(skipped) > 10 else ""
        warnings.warn(f"skipped {len(skipped)} unreadable {what} file(s): {names}{more}",
                      stacklevel=2)


def read_images(paths: Iterable[str | os.PathLike]) -> tuple[list[np.ndarray], list[Path], list[Path]]:
    """Read many images; returns (images, their paths, skipped paths) and warns once."""
    images, ok, skipped = [], [], []
    for p in paths:
        img = try_read_image(p)
        if img is None:
            skipped.append(Path(p))
        else:
            images.append(img)
            ok.append(Path(p))
    warn_skipped(skipped)
    return images, ok, skipped


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a ground-truth mask as bool [H, W] (Medico 2021: /255 if max > 127, then > 0.5)."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise UserError(f"cannot read mask {path}: {exc.strerror or exc}") from None
    m = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE) if data.size else None
    if m is None:
        raise UserError(f"not a readable mask image: {path}")
    return binarize_mask(m)


def write_image(path: str | os.PathLike, img: np.ndarray, what: str = "image") -> Path:
    """Encode ``img`` (BGR or single-channel uint8; the format from the file's extension) and
    write it atomically: OpenCV encodes in memory and Python writes, so a full disk is the
    disk's one line (rtseg.atomic), never libpng's own message or a blamed file name."""
    from rtseg.atomic import write_bytes

    path = Path(path)
    try:
        ok, buf = cv2.imencode(path.suffix or ".png", img)
    except cv2.error:
        ok = False
    if not ok:
        raise UserError(f"cannot write {what} {path} (use a .png file name)")
    write_bytes(path, buf.tobytes())
    return path


def check_mask_size(mask: np.ndarray, image_hw: tuple[int, ...], mask_path, image_path) -> None:
    """UserError unless ``mask`` has its image's size (a mask of another size, or turned by
    90 degrees, would be scored against the wrong pixels)."""
    mh, mw = mask.shape[:2]
    ih, iw = image_hw[:2]
    if (mh, mw) != (ih, iw):
        turned = " (turned by 90 degrees?)" if (mh, mw) == (iw, ih) else ""
        raise UserError(f"mask {mask_path} is {mw}x{mh} but its image {image_path} is "
                        f"{iw}x{ih}{turned}: a mask must have its image's size")


def binarize_mask(m: np.ndarray) -> np.ndarray:
    m = m.astype(np.float32)
    if m.max() > 127:
        m = m / 255.0
    return m > 0.5


@dataclass(frozen=True)
class ImageMaskPair:
    image: Path
    mask: Path | None


def pair_images_masks(images_dir: str | os.PathLike, masks_dir: str | os.PathLike
                      ) -> tuple[list[ImageMaskPair], list[Path]]:
    """Match images with masks by file stem (Kvasir-SEG layout).

    Returns (pairs with a mask, images that have no mask). Raises UserError if no image has one.
    """
    images = list_images(images_dir, "images folder")
    masks = list_images(masks_dir, "masks folder")
    by_stem: dict[str, Path] = {}
    for m in masks:
        by_stem.setdefault(_rel_stem(m, masks_dir), m)
    pairs, missing = [], []
    for img in images:
        m = by_stem.get(_rel_stem(img, images_dir))
        if m is None:
            missing.append(img)
        else:
            pairs.append(ImageMaskPair(img, m))
    if not pairs:
        raise UserError(f"no image in {images_dir} has a mask with the same name in {masks_dir}")
    return pairs, missing


def _rel_stem(path: Path, root: str | os.PathLike) -> str:
    rel = path.relative_to(root)
    return str(rel.with_suffix(""))


def labeled_folder(root: str | os.PathLike) -> list[tuple[Path, str]]:
    """Images of a labeled folder with sub-folders ``polyp/`` and ``non_polyp/``.

    Returns (path, label) pairs; raises UserError if a sub-folder is missing or empty.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"labeled folder not found: {root}")
    out: list[tuple[Path, str]] = []
    for label in CLASS_NAMES:
        sub = root / label
        if not sub.is_dir():
            raise UserError(f"labeled folder {root} has no '{label}/' sub-folder")
        out += [(p, label) for p in list_images(sub, f"'{label}' folder")]
    return out

