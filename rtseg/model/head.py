"""A small segmentation head that refines the Grad-CAM, trained without human masks beyond seeds.

The head reads the activations of a few backbone blocks (from the same forward pass the CAM
uses) and the Grad-CAM itself, and predicts a polyp probability per pixel:

    f_i  = 1x1 conv (C_i -> width) of block ``features[i]``, bilinearly resized to the finest
           of them (stride 8 at the usual blocks)
    c    = the raw Grad-CAM, resized to that grid and min-max normalised (rtseg.model.gradcam.normalize_cam)
    map  = 1x1 conv -> ReLU -> 3x3 conv -> ReLU -> 3x3 conv -> ReLU -> 1x1 conv
           of concat(f_1..f_n, c)   (about 8 M multiply-adds per 224 x 224 frame)
    out  = sigmoid(bilinear resize of map to S x S)
    prob = sigmoid(logit), or with ``agree`` min(sigmoid(logit), g(max of out)): a frame is
           called polyp only when the classifier AND some pixel of the head say so; g is the
           monotone map with g(``agree_at``) = 0.5 (identity at the default 0.5), so the frame
           rule is "logit > 0 and max pixel > agree_at" (the classifier's own operating point
           is its bias: the recipe shifts ``_fc``'s bias)
    [out x 1(prob > 0.5) when ``gate``]

so the classifier's evidence (the CAM) and its own features decide the mask, and with
``gate`` a frame the classifier calls polyp-free shows no mask. The output takes the place of
the CAM everywhere (:meth:`rtseg.model.gradcam.BaseCAM.finish`): the eager segmenter, the fused graph
and its ONNX export, ``predict``/``eval``/``tune``; the manifest's threshold policy is applied
to it as to a CAM. No BatchNorm: nothing to fold, the head is exported as it is.

The head is a submodule of the network (``model.rtseg_head``), so its weights travel in the
bundle's ``weights.pt``; its configuration (:class:`HeadConfig`) is the manifest's ``head``.
How it is trained (seed masks, self-training on its own confident predictions) is in
:mod:`rtseg.train.probe`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rtseg.errors import UserError


@dataclass
class HeadConfig:
    features: list[int] = field(default_factory=lambda: [6, 14, 20])  # block indices
    channels: list[int] = field(default_factory=lambda: [40, 112, 320])  # their channels
    width: int = 16
    gate: bool = True  # no mask where the frame is called "no polyp"
    agree: bool = False  # the frame's polyp probability = min(classifier, head's max pixel)
    agree_at: float = 0.5  # with agree: the head's max pixel must exceed it (operating point)

    @classmethod
    def from_dict(cls, d: dict[str, Any], arch: str) -> "HeadConfig":
        from rtseg.model.arch import num_blocks

        if not isinstance(d, dict):
            raise UserError(f"manifest field 'head' must be an object, not {type(d).__name__}")
        known = {"features", "channels", "width", "gate", "agree", "agree_at"}
        try:
            cfg = cls(**{k: v for k, v in d.items() if k in known})
        except TypeError as exc:
            raise UserError(f"manifest field 'head' is invalid: {exc}") from None
        n = num_blocks(arch)
        feats, chans = list(cfg.features), list(cfg.channels)
        ok = (feats and len(feats) == len(chans)
              and all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n for i in feats)
              and all(isinstance(c, int) and c > 0 for c in chans)
              and isinstance(cfg.width, int) and cfg.width > 0 and isinstance(cfg.gate, bool)
              and isinstance(cfg.agree, bool)
              and isinstance(cfg.agree_at, (int, float)) and not isinstance(cfg.agree_at, bool)
              and 0.0 < float(cfg.agree_at) < 1.0)
        if not ok:
            raise UserError(f"manifest field 'head' is invalid for {arch}: {d}")
        cfg.features, cfg.channels, cfg.agree_at = feats, chans, float(cfg.agree_at)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def block_channels(model, blocks: Sequence[int], size: int = 64) -> list[int]:
    """Output channels of ``model._blocks[i]`` (one small forward pass)."""
    out: dict[int, int] = {}
    hs = [model._blocks[i].register_forward_hook(
        lambda m, a, o, i=i: out.__setitem__(i, int(o.shape[1]))) for i in blocks]
    try:
        p = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size, device=p.device, dtype=p.dtype))
    finally:
        for h in hs:
            h.remove()
    return [out[i] for i in blocks]


class SegHead(nn.Module):
    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.proj = nn.ModuleList(nn.Conv2d(c, w, 1) for c in cfg.channels)
        self.fuse = nn.Sequential(
            nn.Conv2d(w * len(cfg.channels) + 1, 2 * w, 1), nn.ReLU(),
            nn.Conv2d(2 * w, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, 1, 1))

    def logits(self, feats: Sequence[torch.Tensor], raw_cam: torch.Tensor) -> torch.Tensor:
        """[B, 1, g, g] per-pixel logits on the finest feature grid g."""
        from rtseg.model.gradcam import normalize_cam

        g = int(feats[0].shape[-1])
        xs = []
        for proj, f in zip(self.proj, feats):
            y = proj(f)
            if y.shape[-1] != g:
                y = F.interpolate(y, size=(g, g), mode="bilinear", align_corners=False)
            xs.append(y)
        c = normalize_cam(raw_cam.to(xs[0].dtype), g)[:, None]
        return self.fuse(torch.cat(xs + [c], dim=1))

    def forward(self, feats: Sequence[torch.Tensor], raw_cam: torch.Tensor, size: int,
                cls_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(prob [B], map [B, size, size]): the frame's polyp probability and the per-pixel one
        (0 everywhere when gated off)."""
        z = self.logits(feats, raw_cam)
        z = F.interpolate(z, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
        p = torch.sigmoid(z.float())
        return decide(self.cfg, cls_logits, p)


def decide(cfg: HeadConfig, cls_logits: torch.Tensor, pixel: torch.Tensor
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The frame decision and the gate, in one place (the graph, eager and the recipe use it)."""
    prob = torch.sigmoid(cls_logits.float())
    if cfg.agree:
        top = pixel.flatten(1).amax(dim=1).float()
        if cfg.agree_at != 0.5:  # g: logit shifted so that g(agree_at) = 0.5, monotone
            t = top.clamp(1e-6, 1 - 1e-6)
            top = torch.sigmoid(torch.log(t / (1 - t)) - math.log(cfg.agree_at / (1 - cfg.agree_at)))
        prob = torch.minimum(prob, top)
    if cfg.gate:
        pixel = pixel * (prob > 0.5).to(pixel.dtype).view(-1, 1, 1)
    return prob, pixel


def attach_head(model, head: dict | HeadConfig, arch: str) -> SegHead:
    cfg = head if isinstance(head, HeadConfig) else HeadConfig.from_dict(head, arch)
    model.rtseg_head = SegHead(cfg)
    return model.rtseg_head


def model_head(model) -> SegHead | None:
    return getattr(model, "rtseg_head", None)
