"""Active-area cropping in front of any segmenter (bundles whose manifest has ``active_area``).

Each frame is cut to the endoscope's field of view (:mod:`rtseg.model.active_area`) before the
segmenter sees it, as in training; the box is detected on the first frame of a stream and
refreshed every 50 frames (:class:`~rtseg.model.active_area.BoxCache`), so a frame costs a slice
and, where the processor draws a position inset, a small fill. The output's ``boxes`` say
where each S x S map lies in its frame (the overlay and ``rtseg batch`` paste them back).
"""

from __future__ import annotations

import numpy as np

from rtseg.model.active_area import BoxCache, crop
from rtseg.runtime.base import Segmenter, SegOutput, check_frames


class ActiveAreaSegmenter(Segmenter):
    def __init__(self, inner: Segmenter, every: int = 50) -> None:
        self.inner = inner
        self.manifest = inner.manifest
        self.device = inner.device
        self.name = inner.name
        self.cache = BoxCache(every)

    def __getattr__(self, name):  # backend, layer, ... of the wrapped segmenter
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __call__(self, frames: np.ndarray) -> SegOutput:
        frames = check_frames(frames)
        found = [self.cache(f) for f in frames]
        if all(b == found[0] for b in found):
            box, inset = found[0]
            views = np.stack([crop(f, box, True, inset) for f in frames]) if inset is not None \
                else frames[:, box.y0:box.y1, box.x0:box.x1]
            out = self.inner(np.ascontiguousarray(views))
            out.boxes = [box] * len(frames)
            return out
        parts = [self.inner(np.ascontiguousarray(crop(f, b, True, ib)[None])) for f, (b, ib) in zip(frames, found)]
        return SegOutput(np.concatenate([p.prob for p in parts]), np.concatenate([p.cam for p in parts]),
                         np.concatenate([p.mask for p in parts]), [b for b, _ in found])

    def warmup(self, height: int, width: int, batch: int = 1, runs: int = 3) -> None:
        """Warm the segmenter up, then forget the box: the warm-up's noise frames are lit
        everywhere, and a box cached from them would crop the stream's first frames wrongly."""
        super().warmup(height, width, batch, runs)
        self.cache = BoxCache(self.cache.every)

    def describe(self) -> str:
        return self.inner.describe() + ", active-area crop"

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()
