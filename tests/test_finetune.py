"""Training through the network: augmentation moves image and targets together, and the
trainable network computes exactly what the exported model computes."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch


def test_geometry_moves_targets_with_the_image():
    from rtseg.train.augment import AugmentConfig, augment

    cfg = AugmentConfig(size=96, brightness=0, contrast=0, gamma=(1, 1), hue=0, saturation=0, white_balance=0,
                        p_narrow_band=0, p_blur=0, p_noise=0, p_jpeg=0, p_specular=0)
    view = np.full((120, 150, 3), 90, np.uint8)
    cv2.circle(view, (40, 35), 15, (250, 250, 250), -1)
    target = np.zeros((120, 150), np.float32)
    cv2.circle(target, (40, 35), 15, 1.0, -1)
    for seed in range(5):
        img, (t, w) = augment(view, [target, np.ones_like(target)], np.random.default_rng(seed), cfg,
                              fill=[0.0, 1.0])
        assert img.shape == (96, 96, 3) and t.shape == w.shape == (96, 96)
        bright = img[..., 0] > 170
        if t.sum() < 20:  # the disk left the output (zoom or shift): it is gone from both
            assert bright.sum() < 20
            continue
        yy, xx = np.nonzero(t > 0.5)
        by, bx = np.nonzero(bright)
        assert abs(yy.mean() - by.mean()) < 2 and abs(xx.mean() - bx.mean()) < 2
        assert np.allclose(w, 1.0)  # weights outside the view: filled with 1 (black border = no polyp)


def test_photometric_changes_colour_but_keeps_the_border_black():
    from rtseg.train.augment import AugmentConfig, photometric

    img = np.zeros((64, 64, 3), np.uint8)
    img[8:56, 8:56] = (180, 90, 80)
    outs = [photometric(img, np.random.default_rng(s), AugmentConfig()) for s in range(8)]
    assert all(o.shape == img.shape and o.dtype == np.uint8 for o in outs)
    assert all((o[:4] == 0).all() and (o[:, :4] == 0).all() for o in outs)
    means = np.array([o[20:40, 20:40].reshape(-1, 3).mean(0) for o in outs])
    assert means.std(0).max() > 5  # colours do change


@pytest.fixture(scope="module")
def model():
    from rtseg.model.bundle import build_model
    from rtseg.recipes.distill.data import manifest

    torch.manual_seed(0)
    m = manifest(gate=False, agree=True)  # ungated: the segmenter's map is the head's map
    net = build_model(m.arch, pretrained=True, head=m.head).eval()
    return net, m


def test_student_is_the_exported_network(model):
    """Student (frozen stem and early blocks, trainable top, classifier, head) = the bundle's
    eager network: the same frame logit and the same head map."""
    from rtseg.model.bundle import Bundle
    from rtseg.runtime import create_segmenter
    from rtseg.train.finetune import Student

    net, m = model
    st = Student(net, 6).eval()
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (2, m.input_size, m.input_size, 3), dtype=np.uint8)
    from rtseg.model.preprocess import images_to_input

    x = images_to_input(list(frames), m, crop=False)
    with torch.no_grad():
        z, logits = st(x)
        ref = net(x)[:, 0]
    assert torch.allclose(z, ref, atol=1e-4)
    seg = create_segmenter(Bundle(net, m.replace(active_area=False)), backend="torch-eager", device="cpu")
    out = seg(np.ascontiguousarray(frames[..., ::-1]))
    head = torch.sigmoid(torch.nn.functional.interpolate(logits, size=(m.input_size,) * 2, mode="bilinear",
                                                         align_corners=False)[:, 0]).numpy()
    prob = np.minimum(torch.sigmoid(z).numpy(), head.reshape(2, -1).max(1))
    assert np.allclose(out.prob, prob, atol=1e-3)
    assert out.cam.shape == head.shape and np.abs(out.cam - head).max() < 1e-3


def test_fine_tuning_trains_the_top_and_head_only(model):
    from rtseg.train.finetune import FinetuneConfig, Sample, finetune

    net, m = model
    rng = np.random.default_rng(1)
    views = [rng.integers(0, 255, (80, 100, 3), dtype=np.uint8) for _ in range(4)]
    tgt = np.zeros((56, 56), np.float32)
    tgt[20:36, 20:36] = 1
    groups = [[Sample(views[0], 1.0, tgt)], [Sample(views[1], 1.0, tgt, np.ones_like(tgt))],
              [Sample(views[2], 0.0), Sample(views[3], 0.0)]]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    st = finetune(net, m, groups, FinetuneConfig(steps=2, shares=(1, 2, 1)), log=lambda *_: None)
    # the network it started from is untouched; the student's top differs from it
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert not torch.equal(st.top.blocks[-1]._project_conv.weight, net._blocks[-1]._project_conv.weight)
    assert torch.equal(st.base._blocks[6]._project_conv.weight, net._blocks[6]._project_conv.weight)

