"""End-to-end fine-tuning of the default model's network through augmented views.

The frozen probe (ImageNet backbone, linear classifier, segmentation head on cached features)
only ever saw one un-augmented view of each training frame. Here the network is trained as it
runs: frame -> active-area view -> :mod:`rtseg.train.augment` (geometry, colour, light modes,
blur, JPEG, highlights) -> the manifest's preprocessing -> the backbone's blocks after
``from_block`` (earlier blocks stay ImageNet's; every BatchNorm keeps its statistics) -> the
classifier and the Grad-CAM-fed head, exactly the graph that is exported. Losses:

- seed images: their masks (the only pixel labels), BCE + soft Dice on the head's map;
- polyp frames without a mask, of every training source: the probe's confident map of the
  un-augmented frame (the teacher's weak view) as the target of the augmented one (the strong
  view), polyp where it is sure of polyp and, as important, mucosa where it is sure of none,
  so every hospital's endoscope shows the model polyp-free tissue;
- polyp-free frames and the seed images' polyp-free tiles: an empty map;
- every frame: its image label for the classifier (balanced BCE).

Batches mix the three kinds in fixed shares, so no source is all-positive or all-negative.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rtseg.train.augment import AugmentConfig, augment
from rtseg.train.probe import TARGET, map_loss
from rtseg.train.top import Top

VIEW = 288  # longest side a training view is kept at in memory (the recipe's input is 288)


@dataclass
class Sample:
    """One training frame: its network view (uint8 RGB, at most VIEW px), image label, and
    per-pixel target and weight (float [T, T] on the view's grid) or None (empty map, weight 1)."""

    view: np.ndarray
    label: float
    target: np.ndarray | None = None
    weight: np.ndarray | None = None


def small_view(view: np.ndarray) -> np.ndarray:
    """A network view reduced to at most VIEW px on its longest side (training memory)."""
    h, w = view.shape[:2]
    s = VIEW / max(h, w)
    return view if s >= 1 else cv2.resize(view, (max(1, round(w * s)), max(1, round(h * s))),
                                          interpolation=cv2.INTER_AREA)


class Student(nn.Module):
    """The exported network as a trainable function: frozen stem and blocks up to
    ``from_block``, then a :class:`Top` (trainable), the classifier and the head."""

    def __init__(self, model, from_block: int) -> None:
        super().__init__()
        self.base = model  # stem and early blocks: run without gradients, never trained
        self.top = Top(model, from_block)
        self.fc = copy.deepcopy(model._fc)
        self.head = copy.deepcopy(model.rtseg_head)
        self.features = list(self.head.cfg.features)

    def train(self, mode: bool = True) -> "Student":  # BatchNorm statistics stay; drop-connect off
        super().train(False)
        self.head.train(mode)
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(frame logits [B], head logits [B, 1, g, g])."""
        m, k = self.base, self.top.from_block
        feats = {}
        with torch.no_grad():
            h = m._swish(m._bn0(m._conv_stem(x)))
            for i in range(k + 1):
                h = m._blocks[i](h)
                if i in self.features:
                    feats[i] = h
        a, outs = self.top.run(h, tuple(self.features))
        feats.update(outs)
        z = self.fc(a.mean(dim=(2, 3)))[:, 0]
        # Grad-CAM at "head" of a linear classifier on pooled activations (rtseg.train.probe.head_cams)
        raw = F.relu(torch.einsum("nchw,c->nhw", a, self.fc.weight[0] / (a.shape[2] * a.shape[3])))
        return z, self.head.logits([feats[i] for i in self.features], raw)


@dataclass
class FinetuneConfig:
    steps: int = 240
    # per batch (its size is their sum): seed images, polyp frames without mask, polyp-free views
    # (and any further group)
    shares: tuple[int, ...] = (4, 8, 4)
    lr: float = 1e-4  # backbone blocks; the classifier and head learn 10x faster
    from_block: int = 6  # the blocks after this one are fine-tuned (a head feature block)
    seed: int = 0


def batches(groups: list[list[Sample]], cfg: FinetuneConfig, aug: AugmentConfig, m):
    """Endless augmented batches: (input [B, 3, S, S], labels [B], targets, weights [B, T, T])."""
    from rtseg.model.preprocess import images_to_input

    rng = np.random.default_rng(cfg.seed)
    groups = [(g, n) for g, n in zip(groups, cfg.shares) if g]
    while True:
        imgs, labels, tgts, wgts = [], [], [], []
        for g, n in groups:
            for i in rng.integers(0, len(g), n):
                s = g[i]
                t = s.target if s.target is not None else np.zeros((TARGET, TARGET), np.float32)
                wt = s.weight if s.weight is not None else np.ones((TARGET, TARGET), np.float32)
                img, (t2, w2) = augment(s.view, [t, wt], rng, aug, fill=[0.0, 1.0])
                imgs.append(img)
                labels.append(s.label)
                tgts.append(cv2.resize(t2, (TARGET, TARGET), interpolation=cv2.INTER_AREA))
                wgts.append(cv2.resize(w2, (TARGET, TARGET), interpolation=cv2.INTER_AREA))
        yield (images_to_input(imgs, m, crop=False), torch.tensor(labels, dtype=torch.float32),
               torch.from_numpy(np.stack(tgts)), torch.from_numpy(np.stack(wgts)))


def finetune(model, m, groups: list[list[Sample]], cfg: FinetuneConfig | None = None,
             aug: AugmentConfig | None = None, log=print) -> Student:
    """Train a :class:`Student` of ``model`` (the probe's network: classifier and head set) on
    ``groups`` = [seed images, polyp frames without mask, polyp-free views]."""
    cfg = cfg or FinetuneConfig()
    aug = aug or AugmentConfig(size=m.input_size)
    torch.manual_seed(cfg.seed)
    st = Student(model.eval(), cfg.from_block)
    opt = torch.optim.Adam([{"params": list(st.top.parameters()), "lr": cfg.lr},
                            {"params": list(st.fc.parameters()) + list(st.head.parameters()), "lr": 10 * cfg.lr}],
                           weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[cfg.lr, 10 * cfg.lr], total_steps=cfg.steps,
                                                pct_start=0.1)
    n_pos = sum(n for g, n in zip(groups, cfg.shares) if g and g[0].label > 0.5)
    n_neg = sum(n for g, n in zip(groups, cfg.shares) if g and g[0].label <= 0.5)
    pw = torch.tensor(n_neg / max(1, n_pos))
    st.train()
    it = batches(groups, cfg, aug, m)
    run = 0.0
    for step in range(cfg.steps):
        x, y, t, w = next(it)
        z, logits = st(x)
        loss = F.binary_cross_entropy_with_logits(z, y, pos_weight=pw) + map_loss(logits, t, w)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        run = 0.9 * run + 0.1 * loss.item() if step else loss.item()
        if (step + 1) % 40 == 0:
            log(f"    fine-tune step {step + 1}/{cfg.steps}: loss {run:.3f}")
    st.eval()
    return st
