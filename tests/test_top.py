"""The top of the backbone: recomputed from cached features, it computes what the whole network
with its weights installed computes (so the recipe's cached scores are the bundle's)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from rtseg.synthetic import make_sample


@pytest.fixture(scope="module")
def setup():
    from rtseg.model.bundle import build_model
    from rtseg.recipes.distill.data import manifest
    from rtseg.train.probe import extract

    torch.manual_seed(0)
    model = build_model("efficientnet-lite1", pretrained=True).eval()
    m = manifest()
    rng = np.random.default_rng(0)
    samples = [make_sample(rng, (96, 96), polyp=bool(i % 2)) for i in range(12)]
    imgs = [s.image for s in samples]
    y = np.array([i % 2 for i in range(12)], np.float32)
    return model, m, imgs, y, extract(model, m, imgs, m.head["features"])


def test_retop_reproduces_the_network(setup):
    from rtseg.train.top import Top, retop

    model, m, imgs, y, c = setup
    top = Top(model, 14)
    assert len(top.blocks) == 6  # blocks 15-20 of Lite1
    r = retop(top, c, 1, 2)
    assert np.abs(r.gap - c.gap).max() < 2e-3 * max(1.0, np.abs(c.gap).max())
    assert np.abs(r.feats[2].astype(np.float32) - c.feats[2].astype(np.float32)).max() < 2e-2
    assert r.feats[0] is c.feats[0] and r.feats[1] is c.feats[1]  # earlier blocks untouched


def test_a_changed_top_installed_in_a_model_gives_the_features_retop_computes(setup):
    """What the end-to-end step relies on: the recipe scores a fine-tuned network through
    ``retop`` on cached features; the bundle runs the full network with the top installed."""
    from rtseg.train.probe import extract
    from rtseg.train.top import Top, retop

    model, m, imgs, y, c = setup
    top = Top(model, 14)
    bn_stats = model._bn1.running_var.clone()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # weights as training would leave them: every block of the top moved
        for p in top.parameters():
            p.mul_(1 + 0.05 * torch.randn(p.shape, generator=g))
    assert not torch.equal(top.conv_head.weight, model._conv_head.weight)
    assert torch.equal(model._bn1.running_var, bn_stats)  # the source model is untouched
    tuned = copy.deepcopy(model)
    top.install(tuned)
    full = extract(tuned, m, imgs, m.head["features"])
    via = retop(top, c, 1, 2)
    assert np.abs(full.gap - c.gap).max() > 1e-2  # the change shows in the features
    assert np.abs(full.gap - via.gap).max() < 2e-3 * max(1.0, np.abs(full.gap).max())
    assert np.abs(full.feats[2].astype(np.float32) - via.feats[2].astype(np.float32)).max() < 2e-2
