"""The fine-tuned top of the backbone: trained on cached features, it computes what the whole
network with its weights installed computes (so the recipe's cached scores are the bundle's)."""

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


def test_finetuned_top_installed_in_a_model_gives_the_same_features(setup):
    from rtseg.train.probe import extract, fit_classifier, logits_of
    from rtseg.train.top import finetune_top, retop

    model, m, imgs, y, c = setup
    w0, b0 = fit_classifier(c.gap, y, 0.5)
    bn_stats = model._bn1.running_var.clone()
    top, w, b = finetune_top(model, c.feats[1], y, w0, b0, 14, epochs=3, lr=1e-3, batch=4)
    # the top and the classifier moved; the ImageNet statistics did not, nor did the source model
    assert not torch.equal(top.conv_head.weight, model._conv_head.weight)
    assert not np.allclose(w, w0)
    assert torch.equal(top.bn1.running_var, bn_stats) and torch.equal(model._bn1.running_var, bn_stats)
    tuned = copy.deepcopy(model)
    top.install(tuned)
    full = extract(tuned, m, imgs, m.head["features"])
    via = retop(top, c, 1, 2)
    assert np.abs(full.gap - via.gap).max() < 2e-3 * max(1.0, np.abs(full.gap).max())
    # the classifier's logits agree, and it separates its (tiny) training set at least as the probe
    z_full, z_via = logits_of(full.gap, w, b), logits_of(via.gap, w, b)
    assert np.abs(z_full - z_via).max() < 1e-2 * max(1.0, np.abs(z_full).max())
    assert ((z_via > 0) == (y > 0)).mean() >= ((logits_of(c.gap, w0, b0) > 0) == (y > 0)).mean() - 1e-9
