"""The network's view of each frame in front of any segmenter: every segmenter that
:func:`rtseg.runtime.create_segmenter` returns is a :class:`ViewSegmenter`.

Each frame is cut to the endoscope's field of view when the manifest has ``active_area`` (the
box found on that frame alone, as in training and in ``rtseg predict``), resized once to the
network's S x S input on the CPU (:func:`rtseg.model.active_area.network_view`), and only
then given to the graph: a 1920 x 1080 frame costs what a 384 x 288 one does, plus a strided
look for the box and one small resize. In the manifest's tiles mode (the paper's Run 1) each
view is split into 2 x 2 tiles, each tile gets its own CAM, a tile called non-polyp
contributes zeros, and the frame's probability is its largest tile's. The output's ``boxes``
say where each map lies in its frame.
"""

from __future__ import annotations

import numpy as np

from rtseg.model.active_area import detect_box, crop, network_view, resize_view, Box
from rtseg.model.call import is_polyp
from rtseg.runtime.base import Segmenter, SegOutput, check_frames


class ViewSegmenter(Segmenter):
    def __init__(self, inner: Segmenter) -> None:
        self.inner = inner
        self.manifest = inner.manifest
        self.device = inner.device
        self.name = inner.name
        self.size = int(inner.manifest.input_size)
        self.active_area = bool(getattr(inner.manifest, "active_area", False))
        self.tiles = bool(getattr(inner.manifest, "tiles", False))

    def __getattr__(self, name):  # backend, layer, ... of the wrapped segmenter
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def views(self, frames: np.ndarray) -> tuple[np.ndarray, list[Box]]:
        """The S x S views of a batch (4 per frame in tiles mode) and each frame's box."""
        if not self.tiles:
            pairs = [network_view(f, self.size, self.active_area) for f in frames]
            return np.stack([v for v, _ in pairs]), [b for _, b in pairs]
        from rtseg.model.tiles import split_tiles

        views, boxes = [], []
        for f in frames:
            box = detect_box(f) if self.active_area else Box.full(f.shape[:2])
            part = crop(f, box) if self.active_area else f
            views += [resize_view(t, self.size) for t in split_tiles(part)]
            boxes.append(box)
        return np.stack(views), boxes

    def __call__(self, frames: np.ndarray) -> SegOutput:
        frames = check_frames(frames)
        views, boxes = self.views(frames)
        out = self.inner(views)
        if self.tiles:
            out = self._join_tiles(out)
        out.boxes = boxes
        return out

    def _join_tiles(self, out: SegOutput) -> SegOutput:
        probs, cams = out.prob.reshape(-1, 4), out.cam.reshape(-1, 4, *out.cam.shape[1:])
        joined = []
        for p, c in zip(probs, cams):
            c = [ci if is_polyp(pi) else np.zeros_like(ci) for pi, ci in zip(p, c)]
            joined.append(np.block([[c[0], c[1]], [c[2], c[3]]]))
        cam = np.asarray(joined, np.float32)
        mask = np.asarray(self.manifest.threshold.apply(cam), np.uint8)
        return SegOutput(probs.max(axis=1).astype(np.float32), cam, mask)

    def describe(self) -> str:
        return self.inner.describe() + (", active-area crop" if self.active_area else "")

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()
