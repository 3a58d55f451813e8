"""The top of the backbone as a module of its own, and features recomputed through it.

:class:`Top` holds the blocks after ``from_block``, ``_conv_head`` and ``_bn1`` of an
EfficientNet (BatchNorm statistics frozen): what the end-to-end fine-tuning trains
(:mod:`rtseg.train.finetune`). :func:`retop` recomputes, from the cached output of block
``from_block`` (:class:`rtseg.train.probe.Cached`, ``feats``), what depends on the top (pooled
and head activations, later blocks' features) exactly as the full network with these weights
computes them, so the recipe scores and tunes a fine-tuned network on the frozen network's
cached features; :meth:`Top.install` puts the weights into a full network for the bundle.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
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

    def install(self, model) -> None:
        """Copy these weights into ``model`` (the same architecture)."""
        n = len(model._blocks) - len(self.blocks)
        with torch.no_grad():
            for dst, src in zip(model._blocks[n:], self.blocks):
                dst.load_state_dict(src.state_dict())
            model._conv_head.load_state_dict(self.conv_head.state_dict())
            model._bn1.load_state_dict(self.bn1.state_dict())


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
