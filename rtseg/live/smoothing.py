"""Causal filters across the frames of a video, run by :class:`rtseg.pipeline.runner.Runner`
(so ``rtseg stream`` and ``rtseg batch`` on videos filter alike).

- :class:`CallSmoother`: the frame's call. The polyp probability is averaged over the frames
  seen so far (``p_t = a * p_{t-1} + (1 - a) * p_new``), the frame is called polyp when the
  average is (:func:`rtseg.model.call.is_polyp`), and the frame's own mask is shown only then. One frame's false alarm in a
  polyp-free stretch no longer flashes a mask, and a polyp the network misses for one frame
  keeps its call. ``a`` is the manifest's ``call_smoothing`` (chosen by cross-validation when
  the model is built) unless the caller overrides it; ``a = 0``: every frame alone.
- :class:`CamSmoother`: the map itself averaged across frames (the runner thresholds it)
  (``--smooth``; off by default: on moving polyps it lags, lowering Dice, see docs/results.md).

Both keep one state across batches, in frame order; a still image is a one-frame clip, which
they pass through unchanged.
"""

from __future__ import annotations

import numpy as np

from rtseg.model.validate import MAX_CALL_SMOOTHING


def check_call_smoothing(a: float | None, option: str = "--call-smoothing") -> None:
    """A caller's override: None (the model's) or a factor in [0, MAX_CALL_SMOOTHING]."""
    from rtseg.errors import UserError

    if a is not None and not 0.0 <= a <= MAX_CALL_SMOOTHING:  # also rejects NaN
        raise UserError(f"{option} must be in [0, {MAX_CALL_SMOOTHING}] (0: every frame alone), got {a}")


class CallSmoother:
    """Moving average of the frame's polyp probability (the runner keeps the mask only on the
    frames it calls polyp)."""

    def __init__(self, a: float) -> None:
        self.a = float(a)
        self.state: float | None = None

    def __call__(self, prob: np.ndarray) -> np.ndarray:
        """Batch in frame order: prob [B] -> averaged prob [B]."""
        if self.a <= 0.0:
            return prob
        out = np.empty(len(prob), dtype=np.float32)
        for i, p in enumerate(np.asarray(prob, dtype=np.float64)):
            self.state = float(p) if self.state is None else self.a * self.state + (1.0 - self.a) * float(p)
            out[i] = self.state
        return out


class CamSmoother:
    """Exponential moving average of the CAM across frames.

    ``cam_t = a * cam_{t-1} + (1 - a) * cam_new``; ``a = 0`` passes the segmenter's map through.
    """

    def __init__(self, a: float) -> None:
        self.a = float(a)
        self.state: np.ndarray | None = None

    def __call__(self, cam: np.ndarray) -> np.ndarray:
        """Batch [B, S, S] in frame order -> smoothed cams."""
        if self.a <= 0.0:
            return cam
        out = np.empty_like(cam, dtype=np.float32)
        for i in range(cam.shape[0]):
            if self.state is None or self.state.shape != cam[i].shape:
                self.state = cam[i].astype(np.float32, copy=True)
            else:
                self.state *= self.a
                self.state += (1.0 - self.a) * cam[i]
            out[i] = self.state
        return out
