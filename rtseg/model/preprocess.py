"""The one preprocessing path from uint8 pixels to network input.

Training, eager inference, Grad-CAM and the fused exported graph all call
:func:`frames_to_input`, with the size, mean and std taken from the bundle's manifest, so
preprocessing cannot drift between training and inference.

Before these steps, images are cut to the endoscope's active area when the manifest says so
(:func:`network_views`, :mod:`rtseg.model.active_area`; the segmenters do it per frame and
resize the cut-out once on the CPU, :func:`rtseg.model.active_area.network_view`).

Steps: uint8 [B, H, W, 3] (RGB, or BGR with ``bgr=True``) -> float [B, 3, H, W] / 255 ->
bilinear resize to S x S (``align_corners=False``, no antialias: exactly what ONNX ``Resize``
does) -> optional common field-of-view mask (the same octagon for every image, so that the
endoscope's black border carries no class information) -> (x - mean) / std.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


@lru_cache(maxsize=16)
def fov_mask_np(size: int) -> np.ndarray:
    """A regular-octagon field-of-view mask of ``size`` x ``size`` (float32, 1 inside).

    The corners cut are 29% of the side, which covers the black corners of Kvasir-SEG and
    CVC-ClinicDB frames.
    """
    c = 0.29 * size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    inside = (xx + yy >= c) & ((size - xx) + yy >= c) & (xx + (size - yy) >= c) & \
        ((size - xx) + (size - yy) >= c)
    return inside.astype(np.float32)


def fov_mask(size: int, device=None, dtype=torch.float32) -> torch.Tensor:
    return torch.from_numpy(fov_mask_np(size)).to(device=device, dtype=dtype)


def frames_to_input(frames: torch.Tensor, size: int, mean: Sequence[float], std: Sequence[float],
                    bgr: bool = False, fov: bool = False) -> torch.Tensor:
    """uint8 (or float 0-255) [B, H, W, 3] -> normalised float [B, 3, size, size]."""
    x = frames
    if bgr:
        x = x.flip(-1)
    x = x.permute(0, 3, 1, 2).contiguous().float() / 255.0
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    x = (x - mean_t) / std_t
    if fov:
        # outside the field of view the input is what a black pixel gives
        m = fov_mask(size, x.device, x.dtype)
        x = x * m + ((0.0 - mean_t) / std_t) * (1 - m)
    return x


def network_views(images: Sequence[np.ndarray], manifest) -> tuple[list[np.ndarray], list]:
    """(what the network sees of each image, its box in the image).

    With the manifest's ``active_area`` each image is cropped to the endoscope's field of view
    (fixed overlays blanked, :mod:`rtseg.model.active_area`); else the whole image (box = image).
    The view is resized to the input size exactly as every segmenter does it
    (:func:`rtseg.model.active_area.network_view`), so training and inference see the same pixels.
    """
    from rtseg.model.active_area import network_view

    pairs = [network_view(im, manifest.input_size, bool(getattr(manifest, "active_area", False))) for im in images]
    return [v for v, _ in pairs], [b for _, b in pairs]


def images_to_input(images: Sequence[np.ndarray], manifest, bgr: bool = False,
                    crop: bool = True) -> torch.Tensor:
    """A list of uint8 images of any sizes -> one batch, using the manifest's settings.

    Images are first cut to their active area when the manifest asks for it (``crop=False``:
    they already are); images of different sizes are resized one by one (the same resize as
    in the fused graph).
    """
    if crop:
        images, _ = network_views(images, manifest)
    outs = [
        frames_to_input(torch.from_numpy(np.ascontiguousarray(im))[None], manifest.input_size,
                        manifest.mean, manifest.std, bgr=bgr, fov=manifest.fov_mask)
        for im in images
    ]
    return torch.cat(outs, 0)
