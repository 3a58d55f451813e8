"""Constant-mask baselines (rtseg.evaluate.baselines): geometry, radius search, scoring, messages."""

from __future__ import annotations

import numpy as np
import pytest

from rtseg.evaluate.baselines import (DEFAULT_RADII, DEFAULT_RADIUS, BaselineScorer, all_foreground_mask,
                             beats, choose_radius, ellipse_mask, manifest_radius,
                             not_beaten_message, score_baselines)
from rtseg.errors import UserError
from rtseg.evaluate.metrics import METRIC_KEYS, MedicoScorer


@pytest.mark.parametrize("hw,r", [((120, 200), 0.25), ((300, 160), 0.1), ((97, 131), 0.4)])
def test_ellipse_area_radii_and_centre(hw, r):
    h, w = hw
    m = ellipse_mask(hw, r)
    assert m.shape == hw and m.dtype == bool
    assert m.sum() == pytest.approx(np.pi * r * r * w * h, rel=0.02)
    ys, xs = np.nonzero(m)
    assert ys.mean() == pytest.approx((h - 1) / 2, abs=1e-9)
    assert xs.mean() == pytest.approx((w - 1) / 2, abs=1e-9)
    assert np.array_equal(m, m[::-1]) and np.array_equal(m, m[:, ::-1])
    # radii r*W across and r*H down (not the shorter side for both)
    assert abs(m[h // 2].sum() - 2 * r * w) <= 2
    assert abs(m[:, w // 2].sum() - 2 * r * h) <= 2


def test_ellipse_half_radius_touches_every_side_and_default():
    m = ellipse_mask((51, 81), 0.5)
    assert m[25, 0] and m[25, -1] and m[0, 40] and m[-1, 40] and not m[0, 0]
    assert np.array_equal(ellipse_mask((40, 60)), ellipse_mask((40, 60), DEFAULT_RADIUS))
    for bad in (0, -0.1, float("nan")):
        with pytest.raises(UserError):
            ellipse_mask((10, 10), bad)


def test_all_foreground_mask():
    m = all_foreground_mask((7, 9))
    assert m.shape == (7, 9) and m.dtype == bool and m.all()


def _truths(radius, sizes=((120, 160), (90, 90), (200, 150), (64, 128)), shift=0):
    out = []
    for k, hw in enumerate(sizes):
        t = ellipse_mask(hw, radius)
        out.append(np.roll(t, shift * (k % 2), axis=1))  # some off centre by a few pixels
    return out


@pytest.mark.parametrize("radius", [0.15, 0.3, 0.425])
def test_choose_radius_finds_the_radius_of_centred_ellipses(radius):
    r, dice = choose_radius(_truths(radius))
    assert r == pytest.approx(radius) and dice == pytest.approx(1.0)
    r2, dice2 = choose_radius(_truths(radius, shift=3))
    assert r2 == pytest.approx(radius) and 0.8 < dice2 < 1.0


def test_choose_radius_between_grid_points_takes_the_better_neighbour():
    # Dice of nested ellipses = 2 r_small^2 / (r1^2 + r2^2): 0.31 is closer to 0.30 in Dice
    r, dice = choose_radius(_truths(0.31))
    assert r == pytest.approx(0.3)
    assert dice == pytest.approx(2 * 0.3 ** 2 / (0.31 ** 2 + 0.3 ** 2), abs=0.01)
    assert choose_radius(_truths(0.31), radii=[0.5, 0.2])[0] == pytest.approx(0.2)
    assert min(DEFAULT_RADII) == pytest.approx(0.1) and max(DEFAULT_RADII) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        choose_radius([])


def test_score_baselines_uses_the_medico_scorer_and_its_options(rng):
    truths = []
    for hw in ((60, 80), (100, 100), (40, 120)):
        t = np.zeros(hw, bool)
        y, x = rng.integers(0, hw[0] - 20), rng.integers(0, hw[1] - 20)
        t[y:y + 20, x:x + 20] = True
        truths.append(t)
    truths.append(np.zeros((50, 50), bool))  # a non-polyp image
    for reduction in ("per-image", "micro"):
        for zd in (0.0, 1.0):
            b = score_baselines(truths, 0.3, reduction, zd)
            e, f = MedicoScorer(reduction, zd), MedicoScorer(reduction, zd)
            for t in truths:
                e.add(ellipse_mask(t.shape, 0.3), t)
                f.add(np.ones_like(t), t)
            assert b["ellipse"] == {"radius": 0.3, **e.result()}
            assert b["all_foreground"] == f.result()
    per = score_baselines(truths, 0.3)
    assert list(per["all_foreground"])[:6] == list(METRIC_KEYS)
    # all foreground: recall 1 on polyp images, 0/0 recall of the empty truth -> zero_division
    expect_prec = np.mean([t.mean() for t in truths])
    assert per["all_foreground"]["precision"] == pytest.approx(expect_prec)
    assert per["all_foreground"]["recall"] == pytest.approx(3 / 4)
    assert score_baselines(truths, 0.3, zero_division=1.0)["all_foreground"]["recall"] == 1.0
    assert score_baselines(truths, 0.3, "micro")["all_foreground"]["recall"] == 1.0
    with pytest.raises(ValueError):
        score_baselines([])


def test_baseline_scorer_accepts_0_255_masks():
    t = ellipse_mask((40, 50), 0.2).astype(np.uint8) * 255
    s = BaselineScorer(0.2)
    s.add(t)
    assert s.n_images == 1 and s.result()["ellipse"]["dice"] == 1.0


def test_manifest_radius():
    from rtseg.model.manifest import Manifest

    m = Manifest()
    assert manifest_radius(m) == (DEFAULT_RADIUS, "default")
    m2 = m.replace(metrics={"tuning": {"best": {}, "baselines": {"ellipse": {"radius": 0.375}}}})
    assert manifest_radius(m2) == (0.375, "manifest")
    bad = m.replace(metrics={"tuning": {"baselines": {"ellipse": {"radius": -1}}}})
    assert manifest_radius(bad) == (DEFAULT_RADIUS, "default")


def test_beats_and_message():
    base = {"ellipse": {"radius": 0.3, "dice": 0.4}, "all_foreground": {"dice": 0.2}}
    assert beats(0.41, base) and not beats(0.4, base) and not beats(0.3, base)
    assert not_beaten_message(0.41, base) is None
    msg = not_beaten_message(0.3, base, "the model's best masks")
    assert msg == ("the model's best masks do not beat a constant centred ellipse of radius 0.3 "
                   "(Dice 0.3000 vs 0.4000)")
    base2 = {"ellipse": {"radius": 0.3, "dice": 0.1}, "all_foreground": {"dice": 0.5}}
    assert not beats(0.3, base2)
    assert "all-foreground" in not_beaten_message(0.3, base2) and "\n" not in msg
