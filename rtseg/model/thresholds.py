"""Threshold policies that turn a CAM in [0, 1] into a binary mask.

- ``band LO HI``: LO < cam < HI (paper Runs 1-3 use 0.4 < cam < 0.7; note that this band
  drops the hottest region, which the paper's code does too; it is kept for reproduction)
- ``above T``: cam > T (paper Runs 4-5 use 0.28)
- ``otsu``: cam > Otsu's threshold of that CAM (256-bin histogram), per image

The same definitions run on numpy arrays and torch tensors (the fused graph uses the torch
version), so the policy stored in a bundle's manifest means one thing everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rtseg.errors import UserError

KINDS = ("band", "above", "otsu")


@dataclass(frozen=True)
class ThresholdPolicy:
    kind: str = "above"
    lo: float | None = 0.28
    hi: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UserError(f"unknown threshold policy '{self.kind}' (use band LO HI, above T or otsu)")
        if self.kind == "band":
            if self.lo is None or self.hi is None or not (0.0 <= self.lo < self.hi <= 1.0):
                raise UserError("threshold 'band LO HI' needs 0 <= LO < HI <= 1")
        elif self.kind == "above":
            if self.lo is None or not (0.0 <= self.lo < 1.0):
                raise UserError("threshold 'above T' needs 0 <= T < 1")

    # --- parsing / serialisation -------------------------------------------------------
    @classmethod
    def parse(cls, text: str) -> "ThresholdPolicy":
        """Parse ``"band 0.4 0.7"``, ``"above 0.28"``, ``"otsu"`` (commas also accepted)."""
        parts = text.replace(",", " ").split()
        if not parts:
            raise UserError("empty threshold policy (use band LO HI, above T or otsu)")
        kind, args = parts[0].lower(), parts[1:]
        try:
            nums = [float(a) for a in args]
        except ValueError:
            raise UserError(f"threshold values must be numbers: '{text}'") from None
        if kind == "band" and len(nums) == 2:
            return cls("band", nums[0], nums[1])
        if kind == "above" and len(nums) == 1:
            return cls("above", nums[0], None)
        if kind == "otsu" and not nums:
            return cls("otsu", None, None)
        raise UserError(f"bad threshold policy '{text}' (use band LO HI, above T or otsu)")

    def __str__(self) -> str:
        if self.kind == "band":
            return f"band {self.lo:g} {self.hi:g}"
        if self.kind == "above":
            return f"above {self.lo:g}"
        return "otsu"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "lo": self.lo, "hi": self.hi}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ThresholdPolicy":
        return cls(d["kind"], d.get("lo"), d.get("hi"))

    # --- application --------------------------------------------------------------------
    def apply(self, cam):
        """Binary mask (bool) of a CAM batch [..., H, W] in [0, 1]; numpy or torch."""
        if self.kind == "band":
            return (cam > self.lo) & (cam < self.hi)
        if self.kind == "above":
            return cam > self.lo
        t = otsu_threshold(cam)
        return cam > t


def otsu_threshold(cam, bins: int = 256):
    """Otsu's threshold of each CAM in a batch [..., H, W] (values in [0, 1]).

    Returns an array/tensor of shape [..., 1, 1] broadcastable against ``cam``.
    """
    is_torch = not isinstance(cam, np.ndarray)
    if is_torch:
        import torch

        flat = cam.reshape(*cam.shape[:-2], -1).float()
        idx = (flat.clamp(0, 1) * (bins - 1)).round().long()
        hist = torch.zeros(*flat.shape[:-1], bins, dtype=torch.float32, device=cam.device)
        hist.scatter_add_(-1, idx, torch.ones_like(flat))
        centers = torch.linspace(0, 1, bins, device=cam.device)
        cumsum = torch.cumsum
    else:
        flat = cam.reshape(*cam.shape[:-2], -1).astype(np.float64)
        idx = np.rint(np.clip(flat, 0, 1) * (bins - 1)).astype(np.int64)
        hist = np.apply_along_axis(lambda r: np.bincount(r, minlength=bins), -1, idx).astype(np.float64)
        centers = np.linspace(0, 1, bins)
        cumsum = np.cumsum
    total = hist.sum(-1, keepdims=True)
    w0 = cumsum(hist, -1)
    m0 = cumsum(hist * centers, -1)
    mt = m0[..., -1:]
    w1 = total - w0
    between = (mt * w0 - m0 * total) ** 2 / (w0 * w1 + 1e-12)  # proportional to sigma_b^2
    k = between.argmax(-1)
    t = centers[k]
    return t[..., None, None]
