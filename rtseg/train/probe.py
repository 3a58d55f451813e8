"""Training on a frozen pretrained backbone: the classifier layer and the segmentation head.

With ImageNet weights (efficientnet-lite1) the backbone is kept as it is and only two small
parts are trained, from features computed once per image (so a whole cross-validation runs
in minutes on a 2-core CPU):

1. the classifier layer (``model._fc``): logistic regression (scikit-learn) on the spatial
   mean of the head activations, balanced classes. Because the backbone is frozen, Grad-CAM
   at ``"head"`` is then exactly ReLU(sum_c w_c A_c) / (h w) (:func:`head_cams`);
2. the segmentation head (:class:`rtseg.model.head.SegHead`) on block features + that CAM, trained
   with weighted BCE + soft Dice on the seed images' masks (the only human masks used), on
   empty masks of negative images, and optionally (:func:`pseudo_targets`) on its own
   confident predictions for the unlabeled polyp images (self-training).

Every image goes through the one preprocessing path (:func:`rtseg.model.preprocess.images_to_input`
with the bundle's manifest: active area, resize, FOV mask, normalisation), so the cached
features are exactly what the shipped graph computes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from rtseg.model.head import SegHead

TARGET = 56  # resolution of the head's training targets (its logits are upsampled to it)


@dataclass
class Cached:
    """Frozen-backbone features of N images (fp16 where large)."""

    gap: np.ndarray  # float32 [N, C_head] spatial mean of the head activations
    head: np.ndarray  # float16 [N, C_head, h, w] head activations (for the CAM)
    feats: list[np.ndarray]  # float16 [N, C_i, g_i, g_i] per head feature block
    boxes: list = field(default_factory=list)  # active area of each image

    def take(self, idx: Sequence[int]) -> "Cached":
        idx = np.asarray(idx, dtype=np.int64)
        return Cached(self.gap[idx], self.head[idx], [f[idx] for f in self.feats],
                      [self.boxes[i] for i in idx])

    @staticmethod
    def concat(parts: Sequence["Cached"]) -> "Cached":
        return Cached(np.concatenate([p.gap for p in parts]), np.concatenate([p.head for p in parts]),
                      [np.concatenate([p.feats[k] for p in parts]) for k in range(len(parts[0].feats))],
                      [b for p in parts for b in p.boxes])


def extract(model, manifest, images: Sequence[np.ndarray], blocks: Sequence[int], batch: int = 16,
            progress: Callable[[int], None] | None = None) -> Cached:
    """Run RGB uint8 ``images`` through the frozen network; keep what training needs."""
    from rtseg.model.preprocess import images_to_input, network_views

    model.eval()
    store: dict = {}
    hooks = [model._blocks[i].register_forward_hook(
        lambda m, a, o, i=i: store.__setitem__(i, o)) for i in blocks]
    hooks.append(model._swish.register_forward_hook(lambda m, a, o: store.__setitem__("head", o)))
    gaps, heads, feats, boxes = [], [], [[] for _ in blocks], []
    try:
        for s in range(0, len(images), batch):
            views, bx = network_views(images[s:s + batch], manifest)
            x = images_to_input(views, manifest, crop=False)
            with torch.no_grad():
                model(x)
            a = store["head"].float()
            gaps.append(a.mean(dim=(2, 3)).numpy())
            heads.append(a.half().numpy())
            for k, i in enumerate(blocks):
                feats[k].append(store[i].half().numpy())
            boxes += bx
            if progress is not None:
                progress(len(views))
    finally:
        for h in hooks:
            h.remove()
    return Cached(np.concatenate(gaps), np.concatenate(heads), [np.concatenate(f) for f in feats], boxes)


def fit_classifier(gap: np.ndarray, y: np.ndarray, c: float = 1.0,
                   sample_weight: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Logistic regression (balanced classes) on pooled head activations: (weights, bias)."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=c, class_weight="balanced", max_iter=5000)
    clf.fit(gap, y, sample_weight=sample_weight)
    return clf.coef_[0].astype(np.float32), float(clf.intercept_[0])


def set_classifier(model, w: np.ndarray, b: float) -> None:
    with torch.no_grad():
        model._fc.weight.copy_(torch.from_numpy(w).view_as(model._fc.weight))
        model._fc.bias.fill_(b)


def logits_of(gap: np.ndarray, w: np.ndarray, b: float) -> np.ndarray:
    return gap @ w + b


def head_cams(head: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Raw Grad-CAM at "head" of a linear classifier on the frozen head: [N, h, w] float32.

    z = w . mean_ij(A) + b, so dz/dA_cij = w_c / (h w) and the Grad-CAM weight of channel c is
    w_c / (h w): cam = ReLU(sum_c w_c A_c / (h w)).
    """
    n, c, h, ww = head.shape
    out = np.empty((n, h, ww), np.float32)
    wt = (w / (h * ww)).astype(np.float32)
    for s in range(0, n, 256):
        out[s:s + 256] = np.maximum(np.einsum("nchw,c->nhw", head[s:s + 256].astype(np.float32), wt), 0)
    return out


def mask_target(mask: np.ndarray, box, size: int = TARGET) -> np.ndarray:
    """A full-image bool mask as the head's training target: cut to the active area, area-
    averaged to size x size (soft values at the border)."""
    m = mask[box.y0:box.y1, box.x0:box.x1].astype(np.float32)
    return cv2.resize(m, (size, size), interpolation=cv2.INTER_AREA)


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def fit_head(head: SegHead, cached: Cached, raw: np.ndarray, targets: np.ndarray,
             weights: np.ndarray, epochs: int = 40, lr: float = 2e-3, batch: int = 32,
             seed: int = 0, dice_weight: float = 1.0) -> list[float]:
    """Train ``head`` on cached features: weighted BCE + soft Dice (on images with a target).

    ``targets``/``weights``: float [N, TARGET, TARGET] (weight 0 = pixel ignored).
    Returns the mean loss per epoch.
    """
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head.train()
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=1e-4)
    n = len(targets)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * max(1, (n + batch - 1) // batch))
    feats = [_t(f) for f in cached.feats]
    raw_t, tgt_t, w_t = _t(raw), _t(targets.astype(np.float32)), _t(weights.astype(np.float32))
    history = []
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        total = 0.0
        for s in range(0, n, batch):
            idx = perm[s:s + batch]
            fb = [f[idx].float() for f in feats]
            rb, tb, wb = raw_t[idx], tgt_t[idx], w_t[idx]
            if torch.rand(1, generator=g).item() < 0.5:  # horizontal flip of the whole sample
                fb = [f.flip(-1) for f in fb]
                rb, tb, wb = rb.flip(-1), tb.flip(-1), wb.flip(-1)
            loss = map_loss(head.logits(fb, rb), tb, wb, dice_weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        history.append(total / n)
    head.eval()
    return history


def map_loss(z: torch.Tensor, tb: torch.Tensor, wb: torch.Tensor, dice_weight: float = 1.0) -> torch.Tensor:
    """The head's loss: per-pixel logits ``z`` [B, 1, g, g] (resized to the targets) against
    targets ``tb`` [B, T, T] with pixel weights ``wb``: weighted BCE + soft Dice on the images
    that have a target."""
    z = F.interpolate(z, size=tb.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    loss = (F.binary_cross_entropy_with_logits(z, tb, reduction="none") * wb).sum() / wb.sum().clamp_min(1.0)
    has = tb.flatten(1).sum(1) > 0.5
    if dice_weight and bool(has.any()):
        p = torch.sigmoid(z)
        pw, tw = (p * wb)[has].flatten(1), (tb * wb)[has].flatten(1)
        loss = loss + dice_weight * (1 - (2 * (pw * tw).sum(1) + 1) / (pw.sum(1) + tw.sum(1) + 1)).mean()
    return loss


def head_maps(head: SegHead, cached: Cached, raw: np.ndarray, size: int = TARGET,
              batch: int = 64) -> np.ndarray:
    """The head's polyp probability [N, size, size] (no gate) for cached images."""
    out = []
    with torch.no_grad():
        for s in range(0, len(raw), batch):
            fb = [_t(f[s:s + batch]).float() for f in cached.feats]
            z = head.logits(fb, _t(raw[s:s + batch]))
            z = F.interpolate(z, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
            out.append(torch.sigmoid(z).numpy())
    return np.concatenate(out) if out else np.zeros((0, size, size), np.float32)


def pseudo_targets(maps: np.ndarray, lo: float = 0.3, hi: float = 0.7,
                   min_area: float = 0.01) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Self-training targets from the head's own maps of unlabeled polyp images.

    Target 1 where p > hi, 0 where p < lo, ignored (weight 0) in between; an image whose
    confident foreground covers less than ``min_area`` of it is left out (returned ``keep``).
    """
    tgt = (maps > hi).astype(np.float32)
    wgt = ((maps > hi) | (maps < lo)).astype(np.float32)
    keep = tgt.reshape(len(tgt), -1).mean(1) >= min_area
    return tgt, wgt, keep
