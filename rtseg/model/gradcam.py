"""Grad-CAM on the real network, for the polyp logit.

Design (after pytorch-grad-cam): :class:`BaseCAM` owns the hook on the target layer and the
shared maths; a CAM method overrides only :meth:`BaseCAM.get_weights`. Hooks are released by
the context manager, so a model is never left with stray hooks.

Definition used everywhere in rtseg (the fused exported graph reproduces it exactly):
1. ``A`` = output of the target layer: ``model._blocks[i]`` (0..22 for b1) or ``"head"``
   (the Swish after the head convolution + BN);
2. ``z`` = the polyp logit (no activation on it); ``G = dz/dA`` (per image: the batch is
   independent in eval mode, so the gradient of the summed logits gives each image's own);
3. Grad-CAM weights ``w_c`` = spatial mean of ``G``; ``cam = ReLU(sum_c w_c A_c)``;
4. bilinear upsampling (``align_corners=False``) to the network input size S x S;
5. per-image min-max: ``(cam - min) / (max - min + EPS)``, values in [0, 1].
6. where the bundle has a segmentation head (:mod:`rtseg.model.head`), the head refines this CAM
   with the activations of a few blocks of the same forward pass: its per-pixel polyp
   probability takes the CAM's place (:meth:`BaseCAM.finish`).

Unlike the paper's reference code this keeps every Swish activation of the network and puts no
activation on the logit.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from rtseg.model.arch import check_layer

EPS = 1e-7


def target_module(model, layer: int | str):
    """The module whose output is the CAM's activation map."""
    if layer == "head":
        return model._swish  # called for the stem and then the head: the last call wins
    return model._blocks[layer]


def normalize_cam(raw: torch.Tensor, size: int) -> torch.Tensor:
    """Steps 4-5 of the definition: [B, h, w] raw CAM -> [B, size, size] in [0, 1]."""
    cam = F.interpolate(raw[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    flat = cam.reshape(cam.shape[0], -1)
    lo = flat.min(dim=1).values.view(-1, 1, 1)
    hi = flat.max(dim=1).values.view(-1, 1, 1)
    return (cam - lo) / (hi - lo + EPS)


class BaseCAM:
    """Hooks ``layer`` of ``model``; call with a preprocessed batch to get (prob, cam)."""

    def __init__(self, model, layer: int | str, arch: str = "efficientnet-b1") -> None:
        self.model = model
        self.layer = check_layer(arch, layer)
        self._handle = None
        self._acts: torch.Tensor | None = None
        self._feat_handles: list = []
        self._feats: dict[int, torch.Tensor] = {}

    # --- hooks ------------------------------------------------------------------------
    def _hook(self, module, inputs, output) -> None:
        self._acts = output

    def _feat_hook(self, index: int):
        def hook(module, inputs, output) -> None:
            self._feats[index] = output
        return hook

    def __enter__(self) -> "BaseCAM":
        self._handle = target_module(self.model, self.layer).register_forward_hook(self._hook)
        head = getattr(self.model, "rtseg_head", None)
        if head is not None:
            self._feat_handles = [self.model._blocks[i].register_forward_hook(self._feat_hook(i))
                                  for i in head.cfg.features]
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        for h in self._feat_handles:
            h.remove()
        self._feat_handles = []
        self._acts = None
        self._feats = {}

    # --- the one method a CAM variant overrides ----------------------------------------
    def get_weights(self, acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """Channel weights [B, C, 1, 1] from activations and gradients [B, C, h, w]."""
        raise NotImplementedError

    # --- shared maths ----------------------------------------------------------------------
    def raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [B], raw CAM [B, h, w]) before upsampling and normalisation."""
        if self._handle is None:
            raise RuntimeError("use the CAM object as a context manager: `with GradCAM(...) as cam:`")
        with torch.enable_grad():
            x = x.detach().requires_grad_(False)
            logits = self.model(x).reshape(-1)
            acts = self._acts
            # seed every logit with 1 (= the gradient of their sum) without a sum node: the
            # sum's backward needs numel(), which torch.compile cannot trace in the fused graph
            grads, = torch.autograd.grad(logits, acts, grad_outputs=torch.ones_like(logits))
        with torch.no_grad():
            w = self.get_weights(acts, grads)
            cam = F.relu((w * acts).sum(dim=1))
        return logits.detach(), cam

    def finish(self, logits: torch.Tensor, raw: torch.Tensor, size: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Steps 4-6 on the last :meth:`raw` call: (prob [B], cam [B, size, size] in [0, 1]).

        Without a head, prob = sigmoid(logit); with one, the head's decision (rtseg.model.head.decide).
        """
        head = getattr(self.model, "rtseg_head", None)
        if head is None:
            return torch.sigmoid(logits), normalize_cam(raw, size)
        with torch.no_grad():
            feats = [self._feats[i].detach() for i in head.cfg.features]
            return head(feats, raw, size, logits)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(prob [B], cam [B, S, S] in [0, 1]) for a preprocessed batch [B, 3, S, S]."""
        logits, raw = self.raw(x)
        return self.finish(logits, raw, x.shape[-1])


class GradCAM(BaseCAM):
    """Grad-CAM (Selvaraju et al.): weights = spatial mean of the gradients."""

    def get_weights(self, acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        return grads.mean(dim=(2, 3), keepdim=True)


def multi_layer_cams(model, x: torch.Tensor, layers: Sequence[int | str],
                     method: type[BaseCAM] = GradCAM, arch: str = "efficientnet-b1"
                     ) -> tuple[torch.Tensor, dict[int | str, torch.Tensor]]:
    """CAMs of several layers from ONE forward and ONE backward pass.

    Returns (prob [B], {layer: cam [B, S, S] in [0, 1]}); each CAM is exactly what
    ``method(model, layer)`` would give alone (the gradients of the logit with respect to
    several activations come from the same backward pass).
    """
    cams = [method(model, layer, arch) for layer in layers]
    for c in cams:
        c.__enter__()
    try:
        with torch.enable_grad():
            logits = model(x.detach()).reshape(-1)
            acts = [c._acts for c in cams]
            grads = torch.autograd.grad(logits.sum(), acts)
        out = {}
        with torch.no_grad():
            for c, a, g in zip(cams, acts, grads):
                raw = F.relu((c.get_weights(a, g) * a).sum(dim=1))
                out[c.layer] = normalize_cam(raw, x.shape[-1])
        return torch.sigmoid(logits.detach()), out
    finally:
        for c in cams:
            c.release()
