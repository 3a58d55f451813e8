"""The eager PyTorch segmenter: preprocessing + :class:`rtseg.model.gradcam.GradCAM` + threshold.

The reference every other backend is checked against; the model is loaded once and kept.
On CPU denormal floats are flushed to zero during a call (see
:func:`rtseg.graph.fold.cpu_flush_denormal`: up to 80x faster, same CAM).
"""

from __future__ import annotations

import numpy as np
import torch

from rtseg.model.gradcam import GradCAM
from rtseg.model.manifest import with_layer
from rtseg.model.preprocess import frames_to_input
from rtseg.runtime.base import Segmenter, SegOutput, check_frames


class EagerSegmenter(Segmenter):
    name = "torch-eager"

    def __init__(self, bundle, device: str = "cpu", layer: int | str | None = None) -> None:
        self.bundle = bundle.to(device)
        self.manifest = with_layer(bundle.manifest, layer)
        self.device = device
        self._cam = GradCAM(bundle.model, self.manifest.cam_layer, self.manifest.arch).__enter__()

    def __call__(self, frames: np.ndarray) -> SegOutput:
        from rtseg.graph.fold import cpu_flush_denormal

        m = self.manifest
        x = torch.from_numpy(check_frames(frames)).to(self.device)
        with cpu_flush_denormal(self.device):
            x = frames_to_input(x, m.input_size, m.mean, m.std, bgr=True, fov=m.fov_mask)
            prob, cam = self._cam(x)
            mask = m.threshold.apply(cam)
        return SegOutput(prob.float().cpu().numpy(), cam.float().cpu().numpy(),
                         mask.to(torch.uint8).cpu().numpy())

    def close(self) -> None:
        self._cam.release()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
