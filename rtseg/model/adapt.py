"""BatchNorm statistics re-estimated on one site's frames: test-time adaptation to an endoscope
the model was not built from, from unlabeled frames only.

A BatchNorm layer normalises its input with statistics fixed at training time. Another
endoscope's colours, light and optics shift every channel's mean and spread, and the layers
after it see features they never met. :func:`adapt` measures each layer's input on frames of
the new site (one batch, in network order, so each layer sees the already-adapted layers
before it) and rewrites the layer's running statistics so that the new site's features leave
it as the ``reference`` features did:

- ``reference=None`` (AdaBN): the layer normalises with the site's own mean and variance;
- ``reference`` = the per-layer input statistics of the training frames
  (:func:`input_statistics`): the site's features are mapped onto the training distribution
  channel by channel (mean and spread), then normalised as at training time. With the site's
  statistics equal to the reference the layer is unchanged.

Only running statistics change, so the adapted model exports, folds and fuses like any other.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

Stats = dict[str, tuple[torch.Tensor, torch.Tensor]]  # layer name -> (mean, variance) of its input


def batchnorms(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().double().transpose(0, 1).reshape(x.shape[1], -1)
    return x.mean(1), x.var(1, unbiased=False)


@contextmanager
def _pre_hooks(model: nn.Module, fn):
    handles = [m.register_forward_pre_hook(lambda mod, inp, n=n: fn(n, mod, inp[0])) for n, m in batchnorms(model)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def input_statistics(model: nn.Module, batches) -> Stats:
    """Per-channel mean and variance of every BatchNorm layer's input over ``batches`` (network
    inputs [B, 3, S, S]), the model in eval mode and unchanged."""
    acc: dict[str, list] = {}

    def record(name, mod, x):
        s = acc.setdefault(name, [0, 0.0, 0.0])
        n = x.numel() // x.shape[1]
        mean, var = _moments(x)
        s[0], s[1], s[2] = s[0] + n, s[1] + mean * n, s[2] + (var + mean ** 2) * n

    was = model.training
    model.eval()
    with _pre_hooks(model, record):
        for x in batches:
            model(x)
    model.train(was)
    out = {}
    for name, (n, s1, s2) in acc.items():
        mean = s1 / n
        out[name] = (mean.float(), (s2 / n - mean ** 2).clamp_min(0).float())
    return out


@torch.no_grad()
def adapt(model: nn.Module, x: torch.Tensor, reference: Stats | None = None) -> int:
    """Rewrite every BatchNorm layer's running statistics from the site's frames ``x`` (network
    inputs [N, 3, S, S], one batch) as the module's text describes; returns the layers changed."""
    changed = []

    def rewrite(name, mod, inp):
        mu_t, var_t = _moments(inp)
        m, v = mod.running_mean.double(), mod.running_var.double()
        if reference is None:
            new_m, new_v = mu_t, var_t
        else:
            mu_s, var_s = (t.double() for t in reference[name])
            ratio = torch.sqrt(var_t + mod.eps) / torch.sqrt(var_s + mod.eps)  # target spread / training spread
            new_m = mu_t + (m - mu_s) * ratio
            new_v = ((v + mod.eps) * ratio ** 2 - mod.eps).clamp_min(0)
        mod.running_mean.copy_(new_m.to(mod.running_mean.dtype))
        mod.running_var.copy_(new_v.to(mod.running_var.dtype))
        changed.append(name)

    was = model.training
    model.eval()
    if reference is not None:
        missing = [n for n, _ in batchnorms(model) if n not in reference]
        if missing:
            raise ValueError(f"the reference statistics lack {len(missing)} layer(s), e.g. {missing[0]}")
    with _pre_hooks(model, rewrite):
        model(x)
    model.train(was)
    return len(changed)
