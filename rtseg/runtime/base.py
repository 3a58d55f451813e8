"""The segmenter interface shared by every runtime backend.

A segmenter is called on a batch of BGR uint8 frames ``[B, H, W, 3]`` (any H, W: the
:class:`~rtseg.runtime.active.ViewSegmenter` every created segmenter sits behind cuts each frame
to its active area and resizes it to S x S on the CPU; a backend's graph still resizes whatever
it is given) and returns :class:`SegOutput`: the polyp probability, the CAM in [0, 1]
and the thresholded mask, at the model's input size S x S. Preprocessing, CAM layer and
threshold policy come from the bundle's manifest (embedded in exported graphs).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


@dataclass
class SegOutput:
    prob: np.ndarray  # float32 [B]
    cam: np.ndarray  # float32 [B, S, S] in [0, 1]
    mask: np.ndarray  # uint8 [B, S, S], 0/1
    # where each frame's S x S maps lie in the frame (rtseg.model.active_area.Box); None = whole frame
    boxes: list | None = None


class Segmenter(ABC):
    """Frames in, (prob, cam, mask) out. Subclasses set ``name``, ``device``, ``manifest``."""

    name: str = "segmenter"
    device: str = "cpu"
    manifest = None  # rtseg.model.bundle.Manifest

    @abstractmethod
    def __call__(self, frames: np.ndarray) -> SegOutput:
        """Segment a batch of BGR uint8 frames [B, H, W, 3]."""

    def warmup(self, height: int, width: int, batch: int = 1, runs: int = 3) -> None:
        """Run a few batches so one-off costs (allocation, compilation) stay out of timings."""
        rng = np.random.default_rng(0)
        frames = rng.integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
        for _ in range(runs):
            self(frames)

    def describe(self) -> str:
        return f"{self.name} on {self.device}"


def check_frames(frames: np.ndarray) -> np.ndarray:
    """Accept [H, W, 3] or [B, H, W, 3] uint8; return a contiguous [B, H, W, 3] array."""
    from rtseg.errors import UserError

    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise UserError(f"frames must be uint8 [B, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    return np.ascontiguousarray(frames)
