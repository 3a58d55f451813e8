"""The endoscope's active area: find the lit field of view of a frame, crop to it, map back.

Real frames come in many geometries: Kvasir-SEG at many sizes, CVC-ClinicDB 384 x 288,
PolypGen and live video 16:9 with wide black margins, a text panel and a green position
inset on the left. Left as they are, geometry and overlays carry class information (the
polyp and polyp-free images come from different set-ups). So every image, in training and
at inference, is cropped to its *active area* before the network, and fixed overlays inside
it (the green position inset of some processors) are blacked out; masks and heat maps are
mapped back to the full frame.

Detection (:func:`detect_box`, one cheap vectorised step on a 4x-subsampled copy): a pixel is
lit when its brightest channel exceeds the border's black level by ``LIT``; a small opening removes text; the largest
connected lit component (OpenCV) is the field of view; its bounding box, if it covers a
sensible part of the frame, is the active area, else the whole frame. Every frame is cut to its
own box (:func:`network_view`, about 2 ms on a 1080p frame), so a frame's answer never depends on
the frames before it or on the command that reads it.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

LIT = 24  # brightest channel this far above the border's black level = lit
STEP = 4  # detection on every 4th pixel
MIN_FRACTION = 0.15  # a box smaller than this share of the frame is not trusted


@dataclass(frozen=True)
class Box:
    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.x0, self.y0, self.x1, self.y1)

    @classmethod
    def full(cls, hw: tuple[int, int]) -> "Box":
        return cls(0, 0, int(hw[1]), int(hw[0]))

    def covers(self, hw: tuple[int, int]) -> bool:
        """Whether the box is the whole (H, W) frame (nothing was cropped)."""
        return self.as_tuple() == (0, 0, int(hw[1]), int(hw[0]))


def detect_box(image: np.ndarray) -> Box:
    """The bounding box of the lit field of view of an RGB/BGR uint8 image [H, W, 3]."""
    h, w = image.shape[:2]
    if h < 4 * STEP or w < 4 * STEP:
        return Box.full((h, w))
    sub = every_step(image)
    small = cv2.max(cv2.max(sub[..., 0], sub[..., 1]), sub[..., 2])  # 4x numpy's max(axis=2)
    black = int(_percentile_u8(small, 2))  # the border's black level (16 in some videos)
    lit = (small > black + LIT).astype(np.uint8)
    lit = cv2.morphologyEx(lit, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    n, _, stats, _ = cv2.connectedComponentsWithStats(lit, connectivity=8)
    if n <= 1:
        return Box.full((h, w))
    k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, bw, bh, _ = (int(v) for v in stats[k])
    x0, y0 = x * STEP, y * STEP
    x1, y1 = min(w, (x + bw) * STEP), min(h, (y + bh) * STEP)
    if (x1 - x0) * (y1 - y0) < MIN_FRACTION * h * w or x1 - x0 < 32 or y1 - y0 < 32:
        return Box.full((h, w))
    return Box(x0, y0, x1, y1)


def every_step(image: np.ndarray) -> np.ndarray:
    """``image[::STEP, ::STEP]``, contiguous. Where STEP divides both sides, OpenCV's nearest
    resize samples exactly those pixels (source index = STEP * destination index) at a quarter
    of numpy's strided copy's cost on a 1080p frame."""
    h, w = image.shape[:2]
    if h % STEP or w % STEP:
        return np.ascontiguousarray(image[::STEP, ::STEP])
    return cv2.resize(image, (w // STEP, h // STEP), interpolation=cv2.INTER_NEAREST)


def _percentile_u8(values: np.ndarray, q: float) -> float:
    """``np.percentile(values, q)`` (linear) of a uint8 array, from its histogram (no sort)."""
    counts = np.cumsum(np.bincount(values.ravel(), minlength=256))
    k = q / 100.0 * (values.size - 1)
    lo = int(np.floor(k))
    a = int(np.searchsorted(counts, lo + 1))  # the value at sorted position lo
    b = int(np.searchsorted(counts, min(lo + 2, values.size)))  # ... at lo + 1
    return a + (b - a) * (k - lo)


def inset_box(crop: np.ndarray) -> Box | None:
    """The green position inset of some video processors inside a crop, if there is one.

    Looked for in the lower-left quarter only (where the processors put it): saturated
    green/teal pixels (green channel well above red) forming one near-rectangular blob of at
    least 1% of the crop. Colon mucosa is red; narrow-band imaging is teal everywhere, so a
    blob must also be mostly filled in its box and not reach the crop's centre.
    """
    h, w = crop.shape[:2]
    y0, x1 = int(h * 0.55), int(w * 0.40)
    roi = crop[y0::STEP, :x1:STEP].astype(np.int16)
    if roi.size == 0:
        return None
    # channel order does not matter: index 1 is G in RGB and BGR; the inset is teal-green
    # (BGR ~ (142, 183, 44)): green far above one of red/blue and above the other
    lo = np.minimum(roi[..., 0], roi[..., 2])
    hi = np.maximum(roi[..., 0], roi[..., 2])
    g = roi[..., 1]
    green = ((g > 90) & (g > lo + 60) & (g > hi + 15)).astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(green, connectivity=8)
    if n <= 1:
        return None
    k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, bw, bh, area = (int(v) for v in stats[k])
    if area * STEP * STEP < 0.01 * h * w or area < 0.6 * bw * bh:
        return None
    bx0, by0 = x * STEP, y0 + y * STEP
    bx1, by1 = min(w, (x + bw) * STEP + STEP), min(h, y0 + (y + bh) * STEP + STEP)
    return Box(max(0, bx0 - STEP), max(0, by0 - STEP), bx1, by1)


def crop(image: np.ndarray, box: Box, blank_inset: bool = True, inset: Box | None = None
         ) -> np.ndarray:
    """``image`` cut to ``box`` (a view when nothing is blanked), the inset blacked out
    (``inset``: its box in the crop, when already known - a stream's is cached)."""
    out = image[box.y0:box.y1, box.x0:box.x1]
    if blank_inset:
        ib = inset if inset is not None else inset_box(out)
        if ib is not None:
            out = out.copy()
            out[ib.y0:ib.y1, ib.x0:ib.x1] = 0
    return out


def prepare(image: np.ndarray, enabled: bool = True) -> tuple[np.ndarray, Box]:
    """(network view of ``image``, its box in ``image``): the one entry point for stills."""
    if not enabled:
        return image, Box.full(image.shape[:2])
    box = detect_box(image)
    return crop(image, box), box


def paste(values: np.ndarray, box: Box, hw: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """A map computed on the crop (any size) placed back into a zero canvas of the frame size."""
    h, w = int(hw[0]), int(hw[1])
    out = np.zeros((h, w), dtype=values.dtype)
    if box.width <= 0 or box.height <= 0:
        return out
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    src = values if values.dtype != np.bool_ else values.astype(np.uint8)
    part = cv2.resize(src, (box.width, box.height), interpolation=interp)
    out[box.y0:box.y1, box.x0:box.x1] = part.astype(values.dtype, copy=False)
    return out


def network_view(frame: np.ndarray, size: int, active_area: bool = True
                 ) -> tuple[np.ndarray, Box]:
    """(the network's S x S uint8 view of ``frame``, its box in ``frame``): the active area
    detected on this frame alone (so a frame's answer never depends on the frames before it),
    cut out (the inset blanked) and resized once, on the CPU, by a bilinear resize without
    antialiasing (OpenCV's INTER_LINEAR: the sample positions of the graph's own resize, in
    8-bit fixed point), so that the cost of what follows does not grow with the frame size."""
    box = detect_box(frame) if active_area else Box.full(frame.shape[:2])
    part = crop(frame, box) if active_area else frame
    return resize_view(part, size), box


def resize_view(part: np.ndarray, size: int) -> np.ndarray:
    if part.shape[:2] == (size, size):
        return np.ascontiguousarray(part)
    return cv2.resize(part, (size, size), interpolation=cv2.INTER_LINEAR)
