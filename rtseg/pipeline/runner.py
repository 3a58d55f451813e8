"""Frames in, one :class:`FrameResult` per frame out: the one per-frame path of ``rtseg stream``,
``rtseg batch``, ``rtseg predict`` and ``rtseg eval``.

Per batch of frames (BGR uint8, any sizes): the segmenter (its :class:`~rtseg.runtime.active.ViewSegmenter`
cuts each frame to its active area and resizes it to the network input once), the filters across
frames in frame order (:class:`~rtseg.live.smoothing.CamSmoother` on the map,
:class:`~rtseg.live.smoothing.CallSmoother` on the probability), then the mask at the frame's size:
the CAM resized bilinearly into its box and thresholded there (:func:`rtseg.model.cam.cam_to_mask`,
the definition ``rtseg eval`` scores), the manifest's clean-up, and - when the call is smoothed -
kept only on frames called polyp. The call is :func:`rtseg.model.call.is_polyp`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from rtseg.live.smoothing import CallSmoother, CamSmoother
from rtseg.model.call import is_polyp


@dataclass
class FrameResult:
    index: int  # position in the source
    image: np.ndarray  # the BGR frame
    prob: float  # polyp probability (after the call's moving average, if any)
    cam: np.ndarray  # float32 [S, S] in [0, 1] (tiles mode: [2S, 2S])
    box: object  # rtseg.model.active_area.Box: where the CAM lies in the frame
    mask: np.ndarray  # uint8 0/1 [H, W] at the frame's size
    t_capture: float | None = None  # time.perf_counter() when the frame was decoded
    timings: dict = field(default_factory=dict)  # seconds per frame: infer, mask

    @property
    def called(self) -> bool:
        return is_polyp(self.prob)

    def largest_box(self) -> tuple[int, int, int, int, int]:
        """(mask pixels, x, y, w, h of the largest 8-connected component; -1 when empty)."""
        return mask_stats(self.mask)


def mask_stats(mask: np.ndarray) -> tuple[int, int, int, int, int]:
    """(pixels, x, y, w, h of the largest 8-connected component) of a uint8 0/1 mask."""
    import cv2

    pixels = int(cv2.countNonZero(mask))
    if pixels == 0:
        return 0, -1, -1, -1, -1
    x0, y0, bw, bh = cv2.boundingRect(mask)  # components only inside the mask's extent
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask[y0:y0 + bh, x0:x0 + bw], connectivity=8)
    i = 1 + int(np.argmax(stats[1:n, cv2.CC_STAT_AREA]))
    x, y, w, h = (int(v) for v in stats[i, :4])
    return pixels, x + x0, y + y0, w, h


class Runner:
    """A segmenter and the filters of one video (or of independent stills: ``smooth`` and
    ``call_smoothing`` 0). ``policy``/``steps``: the threshold and clean-up (the manifest's)."""

    def __init__(self, seg, smooth: float = 0.0, call_smoothing: float = 0.0, policy=None,
                 steps: Sequence[str] | None = None) -> None:
        m = seg.manifest
        self.seg = seg
        self.policy = policy if policy is not None else m.threshold
        self.steps = tuple(steps if steps is not None else (getattr(m, "postprocess", ()) or ()))
        self.cams = CamSmoother(smooth)
        self.calls = CallSmoother(call_smoothing)

    def __call__(self, images: Sequence[np.ndarray], indices: Sequence[int] | None = None,
                 t_capture: Sequence[float | None] | None = None) -> list[FrameResult]:
        """Frames in frame order -> their results (the filters keep their state across calls)."""
        from rtseg.model.cam import cam_to_mask

        n = len(images)
        t0 = time.perf_counter()
        prob, cam, boxes = self._segment(images)
        cam = self.cams(cam)
        prob = self.calls(prob)
        t1 = time.perf_counter()
        gate = self.calls.a > 0.0
        out = []
        for i, img in enumerate(images):
            ta = time.perf_counter()
            keep = not gate or is_polyp(float(prob[i]))  # a frame the averaged call drops: no mask to make
            mask = (cam_to_mask(cam[i], self.policy, img.shape[:2], self.steps, boxes[i]).view(np.uint8)
                    if keep else np.zeros(img.shape[:2], np.uint8))
            out.append(FrameResult(indices[i] if indices is not None else i, img, float(prob[i]),
                                   cam[i], boxes[i], mask,
                                   t_capture[i] if t_capture is not None else None,
                                   {"infer": (t1 - t0) / n, "mask": time.perf_counter() - ta}))
        return out

    def _segment(self, images: Sequence[np.ndarray]):
        """(prob [B], cam [B, S, S], boxes) for frames of one or several sizes."""
        from rtseg.model.active_area import Box

        if all(im.shape == images[0].shape for im in images):
            frames = images[0][None] if len(images) == 1 else np.stack(images)
            outs = [self.seg(frames)]
        else:
            outs = [self.seg(im[None]) for im in images]
        prob = np.concatenate([o.prob for o in outs]).astype(np.float32, copy=False)
        cam = np.concatenate([o.cam for o in outs]).astype(np.float32, copy=False)
        boxes = [b for o in outs for b in (o.boxes or [None] * len(o.prob))]
        boxes = [b if b is not None else Box.full(im.shape[:2]) for b, im in zip(boxes, images)]
        return prob, cam, boxes
