"""Drawing the segmentation on a video frame, vectorised (OpenCV calls, no per-pixel Python).

Per frame: the mask comes at the frame's size (the pipeline's runner made it there, once; an
S x S mask is resized here, nearest neighbour); the mask colour is
alpha-blended only inside the mask's bounding box (``cv2.addWeighted`` + ``cv2.copyTo``); the
mask's outer contour is drawn on top. With ``heatmap`` the CAM is resized (bilinear) and its JET
colour map blended over the whole frame instead of the flat fill (the contour stays). The
polyp probability, the live fps and labels ("SYNTHETIC DEMO", "UNTRAINED") are written on the
frame. Frames are modified in place and returned.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from rtseg.model.active_area import paste
from rtseg.model.call import is_polyp

MASK_COLOUR = (0, 255, 0)  # BGR
CONTOUR_COLOUR = (0, 255, 255)
WARN_COLOUR = (0, 0, 255)
FONT = cv2.FONT_HERSHEY_SIMPLEX


class Overlay:
    """Reusable drawer; buffers are kept between frames of one size."""

    def __init__(self, alpha: float = 0.4, heatmap: bool = False, contour: bool = True,
                 colour: tuple[int, int, int] = MASK_COLOUR, labels: Sequence[str] = (),
                 warning: str | None = None) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError("alpha must be in [0, 1]")
        self.alpha = float(alpha)
        self.heatmap = heatmap
        self.contour = contour
        self.colour = tuple(int(c) for c in colour)
        self.labels = list(labels)
        self.warning = warning
        self._shape: tuple[int, int] | None = None
        self._solid: np.ndarray | None = None
        self._mask: np.ndarray | None = None
        self._blend: np.ndarray | None = None

    def _buffers(self, h: int, w: int) -> None:
        if self._shape != (h, w):
            self._shape = (h, w)
            self._solid = np.empty((h, w, 3), np.uint8)
            self._solid[:] = self.colour
            self._mask = np.empty((h, w), np.uint8)
            self._blend = np.empty((h, w, 3), np.uint8)

    def resize_mask(self, mask: np.ndarray, h: int, w: int, box=None) -> np.ndarray:
        """The S x S uint8 0/1 mask at the frame size (nearest): the only mask resize.

        ``box`` (rtseg.model.active_area.Box): the part of the frame the mask covers (the active
        area the segmenter cropped to); outside it the mask is 0."""
        self._buffers(h, w)
        m = mask if mask.dtype == np.uint8 else mask.astype(np.uint8)
        if box is None or box.covers((h, w)):
            return cv2.resize(m, (w, h), dst=self._mask, interpolation=cv2.INTER_NEAREST)
        self._mask[:] = 0
        self._mask[box.y0:box.y1, box.x0:box.x1] = cv2.resize(
            m, (box.width, box.height), interpolation=cv2.INTER_NEAREST)
        return self._mask

    def draw(self, frame: np.ndarray, mask: np.ndarray, cam: np.ndarray | None = None,
             prob: float | None = None, fps: float | None = None, box=None) -> np.ndarray:
        """Overlay ``mask`` (uint8 0/1 at the frame's size, or S x S) and optionally ``cam`` on a
        BGR ``frame``, in place (``box``: where in the frame the S x S maps lie; None = the whole
        frame)."""
        h, w = frame.shape[:2]
        self._buffers(h, w)
        m = mask if mask.shape == (h, w) and mask.dtype == np.uint8 else self.resize_mask(mask, h, w, box)
        x, y, bw, bh = cv2.boundingRect(m)  # zero-size box for an empty mask
        if self.heatmap and cam is not None:
            if box is None or box.covers((h, w)):
                heat = cv2.resize(cam, (w, h), interpolation=cv2.INTER_LINEAR)
            else:
                heat = paste(cam.astype(np.float32), box, (h, w))
            heat8 = cv2.convertScaleAbs(heat, alpha=255.0)
            colour = cv2.applyColorMap(heat8, cv2.COLORMAP_JET)
            cv2.addWeighted(frame, 1.0 - self.alpha, colour, self.alpha, 0.0, dst=frame)
        elif bw and bh and self.alpha > 0:
            roi = (slice(y, y + bh), slice(x, x + bw))
            f, b = frame[roi], self._blend[roi]
            cv2.addWeighted(f, 1.0 - self.alpha, self._solid[roi], self.alpha, 0.0, dst=b)
            cv2.copyTo(b, m[roi], f)  # in place where the mask is set (numpy's copyto(where=) is 50x slower)
        if self.contour and bw and bh:
            contours, _ = cv2.findContours(m[y:y + bh, x:x + bw], cv2.RETR_EXTERNAL,
                                           cv2.CHAIN_APPROX_SIMPLE, offset=(x, y))
            cv2.drawContours(frame, contours, -1, CONTOUR_COLOUR, max(1, round(h / 240)),
                             cv2.LINE_AA)
        self.draw_text(frame, prob, fps)
        return frame

    def draw_text(self, frame: np.ndarray, prob: float | None, fps: float | None) -> None:
        h, w = frame.shape[:2]
        scale = max(0.35, h / 600.0)
        thick = max(1, round(h / 300))
        lines: list[tuple[str, tuple[int, int, int]]] = []
        if prob is not None:
            lines.append((f"polyp {prob:.2f}", (0, 0, 255) if is_polyp(prob) else (255, 255, 255)))
        if fps is not None:
            lines.append((f"{fps:5.1f} fps", (255, 255, 255)))
        y = 4
        for text, colour in lines:
            y = _label(frame, text, (4, y), scale, thick, colour)
        yr = 4
        for text in self.labels:
            (tw, _), _ = cv2.getTextSize(text, FONT, scale, thick)
            yr = _label(frame, text, (w - tw - 10, yr), scale, thick, (0, 255, 255))
        if self.warning:
            big = scale * 1.6
            (tw, th), _ = cv2.getTextSize(self.warning, FONT, big, thick + 1)
            _label(frame, self.warning, ((w - tw) // 2 - 3, h - th - 16), big, thick + 1,
                   (255, 255, 255), bg=WARN_COLOUR)


def _label(frame: np.ndarray, text: str, org: tuple[int, int], scale: float, thick: int,
           colour: tuple[int, int, int], bg: tuple[int, int, int] = (0, 0, 0)) -> int:
    """Text on a filled box with its top-left corner at ``org``; returns the y below it."""
    (tw, th), base = cv2.getTextSize(text, FONT, scale, thick)
    x, y = org
    cv2.rectangle(frame, (x, y), (x + tw + 6, y + th + base + 6), bg, -1)
    cv2.putText(frame, text, (x + 3, y + th + 3), FONT, scale, colour, thick, cv2.LINE_AA)
    return y + th + base + 8
