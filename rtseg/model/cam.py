"""Grad-CAM of images with a bundle: its preprocessing, CAM layer (:func:`rtseg.model.manifest.resolve_layer`)
and tiles mode, and a CAM back on the image and into a mask. The CAM itself is
:mod:`rtseg.model.gradcam`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from rtseg.model.call import is_polyp
from rtseg.model.gradcam import GradCAM


@dataclass
class CamResult:
    prob: np.ndarray  # float32 [N]
    cams: list[np.ndarray]  # float32 [S, S] each (tiles mode: [2S, 2S], gated by tile prob)
    boxes: list | None = None  # the active area each CAM covers (rtseg.model.active_area.Box)


def cam_images(bundle, images: Sequence[np.ndarray], layer: int | str | None = None,
               batch_size: int = 16, device: str | None = None) -> CamResult:
    """Grad-CAM of RGB uint8 images with the bundle's preprocessing and CAM layer.

    In tiles mode (``manifest.tiles``, the paper's Run 1) every image is split into 2 x 2
    tiles, each tile gets its own CAM, and the four are put back together; a tile the
    classifier calls non-polyp (not :func:`~rtseg.model.call.is_polyp`) contributes zeros. The image's prob is the
    largest tile prob.
    """
    from rtseg.model.preprocess import images_to_input, network_views
    from rtseg.model.tiles import split_tiles

    from rtseg.model.manifest import resolve_layer

    m = bundle.manifest
    layer = resolve_layer(m, layer)
    dev = device or next(bundle.model.parameters()).device
    tiles = m.tiles
    if tiles:  # tiles of the full-resolution view, each resized once (as the segmenters do)
        from rtseg.model.active_area import prepare, resize_view

        pairs = [prepare(im, bool(m.active_area)) for im in images]
        boxes = [b for _, b in pairs]
        inputs = [resize_view(t, m.input_size) for v, _ in pairs for t in split_tiles(v)]
    else:
        views, boxes = network_views(images, m)
        inputs = list(views)
    probs, cams = [], []
    with GradCAM(bundle.model, layer, m.arch) as cam:
        for i in range(0, len(inputs), batch_size):
            x = images_to_input(inputs[i:i + batch_size], m, crop=False).to(dev)
            p, c = cam(x)
            probs.append(p.float().cpu().numpy())
            cams.extend(c.float().cpu().numpy())
    prob = np.concatenate(probs) if probs else np.zeros(0, np.float32)
    if not tiles:
        return CamResult(prob.astype(np.float32), cams, boxes)
    out_p, out_c = [], []
    for k in range(len(images)):
        tp, tc = prob[4 * k:4 * k + 4], cams[4 * k:4 * k + 4]
        tc = [c if is_polyp(p) else np.zeros_like(c) for p, c in zip(tp, tc)]
        out_c.append(np.block([[tc[0], tc[1]], [tc[2], tc[3]]]).astype(np.float32))
        out_p.append(tp.max())
    return CamResult(np.asarray(out_p, np.float32), out_c, boxes)


def resize_to(cam: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a CAM to an image's (H, W)."""
    import cv2

    return cv2.resize(cam.astype(np.float32), (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)


def place_cam(cam: np.ndarray, hw: tuple[int, int], box=None) -> np.ndarray:
    """A CAM at an image's (H, W): resized to the whole image, or into ``box`` (0 outside)."""
    if box is None or box.covers(hw):
        return resize_to(cam, hw)
    from rtseg.model.active_area import paste

    return paste(cam.astype(np.float32), box, hw)


def cam_to_mask(cam: np.ndarray, policy, hw: tuple[int, int], steps=(), box=None) -> np.ndarray:
    """THE mask of a CAM at an image's (H, W): the CAM resized bilinearly into ``box`` (its
    active area; None = the whole image), thresholded there with ``policy`` (outside the field
    of view nothing is a polyp, whatever the policy; ``otsu`` sees the field of view only), then
    the post-processing ``steps`` (a manifest's ``postprocess``): bool [H, W]. Every command's
    mask is this one (:class:`rtseg.pipeline.runner.Runner`)."""
    import cv2

    from rtseg.model.postprocess import refine

    h, w = int(hw[0]), int(hw[1])
    if box is None or box.covers((h, w)):
        y0, y1, x0, x1 = 0, h, 0, w
    else:
        y0, y1, x0, x1 = box.y0, box.y1, box.x0, box.x1
    mask = np.zeros((h, w), bool)
    if y1 > y0 and x1 > x0:
        part = cv2.resize(np.asarray(cam, np.float32), (x1 - x0, y1 - y0),
                          interpolation=cv2.INTER_LINEAR)
        mask[y0:y1, x0:x1] = np.asarray(policy.apply(np.clip(part, 0.0, 1.0)), dtype=bool)
    return refine(mask, steps) if steps else mask
