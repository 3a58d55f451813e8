"""Fine-tuning the top of the frozen backbone with the classifier, on cached features.

The default model's recipe keeps the ImageNet backbone frozen up to block ``from_block`` and may
fine-tune what follows (the later blocks, ``_conv_head`` and the affine part of ``_bn1``;
BatchNorm running statistics stay the ImageNet ones) together with the linear classifier,
starting from the ImageNet weights and the linear probe. It trains on the cached output of
block ``from_block`` (:class:`rtseg.train.probe.Cached`, ``feats``), so an epoch costs the top
only; :func:`retop` then recomputes what depends on the top (pooled and head activations, the
last block's features) for any cached images, exactly as the full network with these weights
computes them. The classifier stays linear on the pooled head activations, so Grad-CAM at
"head" is still :func:`rtseg.train.probe.head_cams` and the fused graph is unchanged.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rtseg.train.probe import Cached


class Top(nn.Module):
    """Blocks ``from_block + 1 ..`` + conv_head + bn1 + swish of an EfficientNet, in eval mode
    (BatchNorm statistics frozen; drop-connect off)."""

    def __init__(self, model, from_block: int) -> None:
        super().__init__()
        self.from_block = from_block
        self.blocks = copy.deepcopy(model._blocks[from_block + 1:])
        self.conv_head, self.bn1 = copy.deepcopy(model._conv_head), copy.deepcopy(model._bn1)
        self.swish = model._swish
        self.eval()

    def train(self, mode: bool = True) -> "Top":  # BatchNorm statistics are never updated
        return super().train(False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(head activations [B, 1280, h, w], the last block's output)."""
        last = self.from_block + len(self.blocks)
        a, outs = self.run(x, (last,))
        return a, outs[last]

    def run(self, x: torch.Tensor, keep=()) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """(head activations, {block index: its output} for the blocks in ``keep``)."""
        outs = {}
        for i, blk in enumerate(self.blocks, start=self.from_block + 1):
            x = blk(x)
            if i in keep:
                outs[i] = x
        return self.swish(self.bn1(self.conv_head(x))), outs

    def describe(self) -> str:
        """What was fine-tuned, for the bundle's manifest."""
        return (f"blocks {self.from_block + 1}-{self.from_block + len(self.blocks)}, conv_head and bn1's "
                "affine fine-tuned with the classifier")

    def install(self, model) -> None:
        """Copy these weights into ``model`` (the same architecture)."""
        n = len(model._blocks) - len(self.blocks)
        with torch.no_grad():
            for dst, src in zip(model._blocks[n:], self.blocks):
                dst.load_state_dict(src.state_dict())
            model._conv_head.load_state_dict(self.conv_head.state_dict())
            model._bn1.load_state_dict(self.bn1.state_dict())


def finetune_top(model, x: np.ndarray, y: np.ndarray, w: np.ndarray, b: float, from_block: int,
                 epochs: int = 12, seed: int = 0, lr: float = 1e-4, batch: int = 64
                 ) -> tuple[Top, np.ndarray, float]:
    """Fine-tune the top of ``model`` and a linear classifier (from ``w``, ``b``) on the cached
    block-``from_block`` features ``x`` [N, C, g, g] with labels ``y`` (balanced BCE, horizontal
    flips). Returns (top, classifier weights, bias)."""
    torch.manual_seed(seed)
    top = Top(model, from_block)
    fc = nn.Linear(int(w.size), 1)
    with torch.no_grad():
        fc.weight.copy_(torch.from_numpy(np.asarray(w, np.float32))[None])
        fc.bias.fill_(float(b))
    opt = torch.optim.Adam([{"params": list(top.parameters()), "lr": lr},
                            {"params": fc.parameters(), "lr": 10 * lr}], weight_decay=1e-4)
    xt, yt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.asarray(y, np.float32))
    pw = torch.tensor(float((yt == 0).sum()) / max(1.0, float((yt == 1).sum())))  # balanced classes
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(yt), generator=g)
        for s in range(0, len(perm), batch):
            i = perm[s:s + batch]
            xb = xt[i].float()
            flip = torch.rand(len(i), generator=g) < 0.5
            xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(3), xb)
            z = fc(top(xb)[0].mean(dim=(2, 3)))[:, 0]
            loss = F.binary_cross_entropy_with_logits(z, yt[i], pos_weight=pw)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return top, fc.weight.detach()[0].numpy().copy(), float(fc.bias.detach())


def retop(top: Top, c: Cached, src: int, dst: int | None = None, slots: dict[int, int] | None = None,
          batch: int = 128) -> Cached:
    """``c`` with what the top computes redone from ``c.feats[src]`` (block ``top.from_block``):
    the pooled and head activations and the features of later blocks that ``c`` holds:
    ``slots`` {block index: index in ``c.feats``}, or ``dst``: the last block's index."""
    if slots is None:
        slots = {} if dst is None else {top.from_block + len(top.blocks): dst}
    gaps, heads, kept = [], [], {b: [] for b in slots}
    with torch.no_grad():
        for s in range(0, len(c.gap), batch):
            a, outs = top.run(torch.from_numpy(c.feats[src][s:s + batch]).float(), tuple(slots))
            gaps.append(a.mean(dim=(2, 3)).numpy())
            heads.append(a.half().numpy())
            for b in slots:
                kept[b].append(outs[b].half().numpy())
    if not gaps:
        return c
    feats = list(c.feats)
    for b, k in slots.items():
        feats[k] = np.concatenate(kept[b])
    return Cached(np.concatenate(gaps), np.concatenate(heads), feats, list(c.boxes))
