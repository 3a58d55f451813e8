"""Label propagation logic on constructed feature matrices (no images, no feature extractor)."""

from __future__ import annotations

import numpy as np
import pytest

from rtseg.propagate.files import (match_truth, parse_tile_path, split_tiles,
    tile_labels_from_mask, tile_path, truth_report)
from rtseg.propagate.kmeans import NON_POLYP, POLYP, UNLABELED, propagate, scale_features


def blobs(centers, n_per, spread=0.3, seed=0):
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(c, spread, (n_per, len(c))) for c in np.asarray(centers, float)])
    blob = np.repeat(np.arange(len(centers)), n_per)
    return x, blob


def seeds_from(truth, blob, per_blob: dict[int, int]):
    """-1 everywhere except the first ``per_blob[b]`` members of each blob b (their truth)."""
    y = np.full(len(truth), UNLABELED)
    for b, k in per_blob.items():
        idx = np.flatnonzero(blob == b)[:k]
        y[idx] = truth[idx]
    return y


def test_separated_blobs_propagate_correctly_and_reach_target():
    # 4 polyp blobs, 4 non_polyp blobs, 50 points each; 3 seeds in every blob
    centers = [[10 * i, 0, 0] for i in range(4)] + [[10 * i, 50, 0] for i in range(4)]
    x, blob = blobs(centers, 50)
    truth = np.where(blob < 4, POLYP, NON_POLYP)
    y = seeds_from(truth, blob, {b: 3 for b in range(8)})
    r = propagate(x, y, n_clusters=8, target=300, scale="none")
    assert r.stop_reason == "target" and r.target_reached
    assert r.n_labeled == 300  # exactly the target: the last cluster is cut at its centre
    prop = r.source == "propagated"
    assert prop.sum() == 300 - 24
    assert (r.labels[prop] == truth[prop]).all()
    assert (r.round[r.source == "seed"] == 0).all() and (r.round[prop] >= 1).all()
    assert r.seeds == {"non_polyp": 12, "polyp": 12}
    # ranking: clusters with most labeled members first; with equal counts every cluster is
    # a candidate, so some labels are left (target < 400)
    assert (r.labels == UNLABELED).sum() == 100


def test_each_round_labels_something_new_and_propagated_labels_act_as_seeds():
    # two far-apart groups (polyp / non_polyp), each of 4 sub-blobs; seeds only in one
    # sub-blob per group: round 1 (k=8) labels those, later coarser rounds the rest
    sub = [[0, 0], [6, 0], [0, 6], [6, 6]]
    centers = [[a, b] for a, b in sub] + [[a + 100, b] for a, b in sub]
    x, blob = blobs(centers, 40, spread=0.5)
    truth = np.where(blob < 4, POLYP, NON_POLYP)
    y = seeds_from(truth, blob, {0: 2, 4: 2})
    r = propagate(x, y, n_clusters=8, target=10_000, scale="none")
    assert r.stop_reason == "exhausted"
    assert (r.labels == truth).all()
    assert len(r.rounds) >= 2
    assert [s.round for s in r.rounds] == list(range(1, len(r.rounds) + 1))
    totals = [4] + [s.labeled_total for s in r.rounds]
    assert all(b > a for a, b in zip(totals, totals[1:]))  # every round labels something new
    for s in r.rounds:
        assert sum(s.new.values()) == int((r.round == s.round).sum()) > 0
    # k decreases from fit to fit (the paper's refit on unchanged data relabels nothing)
    assert r.fits[0] == 8 and all(b < a for a, b in zip(r.fits, r.fits[1:]))
    assert r.rounds[0].labeled_total == 4 + 2 * 38  # round 1: only the two seeded sub-blobs


def test_stops_and_says_so_when_nothing_more_can_be_labeled():
    # blob A is mixed (3 polyp + 1 non_polyp seeds), blob B pure non_polyp
    x, blob = blobs([[0, 0], [100, 0]], 30)
    y = np.full(60, UNLABELED)
    y[[0, 1, 2]] = POLYP
    y[3] = NON_POLYP
    y[[30, 31]] = NON_POLYP
    r = propagate(x, y, n_clusters=2, target=60, purity=0.8, scale="none")
    assert r.stop_reason == "stalled" and not r.target_reached
    assert "nothing more can be labeled" in r.message
    assert r.rounds[0].clusters_mixed == 1
    assert (r.labels[30:] == NON_POLYP).all()  # B labeled
    assert (r.labels[4:30] == UNLABELED).all()  # A left alone: purity 0.75 < 0.8
    assert r.fits == [2]  # no endless refitting


def test_purity_rule_on_a_mixed_cluster():
    x, blob = blobs([[0, 0], [100, 0]], 30)
    y = np.full(60, UNLABELED)
    y[[0, 1, 2]] = POLYP
    y[3] = NON_POLYP
    y[30] = NON_POLYP
    r = propagate(x, y, n_clusters=2, target=1000, purity=0.7, scale="none")
    assert (r.labels[4:30] == POLYP).all()  # 0.75 >= 0.7: majority wins
    assert r.stop_reason == "exhausted"
    # a tie never labels, even with purity 0.5
    y2 = y.copy()
    y2[2] = NON_POLYP  # blob A: 2 polyp, 2 non_polyp
    r2 = propagate(x, y2, n_clusters=2, target=60, purity=0.5, scale="none")
    assert (r2.labels[4:30] == UNLABELED).all() and r2.stop_reason == "stalled"


def test_scaling_matters_when_one_feature_has_a_huge_range():
    rng = np.random.default_rng(1)
    n = 400
    truth = np.repeat([POLYP, NON_POLYP], n // 2)
    informative = rng.normal(0, 0.1, (n, 4)) + truth[:, None] * 1.0  # range ~0-1
    noise = rng.uniform(0, 1000, (n, 1))  # range 0-1000, no class information
    x = np.hstack([informative, noise])
    y = np.full(n, UNLABELED)
    for c in (POLYP, NON_POLYP):
        y[np.flatnonzero(truth == c)[:15]] = c

    def acc(scale):
        r = propagate(x, y, n_clusters=20, target=n, scale=scale)
        m = r.source == "propagated"
        return (r.labels[m] == truth[m]).mean(), m.sum()

    acc_std, n_std = acc("standard")
    acc_none, _ = acc("none")
    assert acc_std > 0.97 and n_std > 300
    assert acc_none < 0.8
    z = scale_features(x, "standard")
    assert np.allclose(z.mean(0), 0) and np.allclose(z.std(0), 1)
    assert np.array_equal(scale_features(x, "none"), x)


def test_target_at_or_below_seeds_and_deterministic():
    x, blob = blobs([[0, 0], [50, 0]], 20)
    y = seeds_from(np.where(blob == 0, POLYP, NON_POLYP), blob, {0: 3, 1: 3})
    r = propagate(x, y, n_clusters=2, target=5)
    assert r.stop_reason == "target" and r.n_propagated == 0 and r.rounds == [] and r.fits == []
    a = propagate(x, y, n_clusters=2, target=30)
    b = propagate(x, y, n_clusters=2, target=30)
    assert np.array_equal(a.labels, b.labels) and a.n_labeled == 30


def test_bad_arguments():
    x = np.zeros((10, 3))
    y = np.full(10, UNLABELED)
    y[0] = POLYP
    with pytest.raises(ValueError, match="non_polyp"):
        propagate(x, y, n_clusters=2)
    y[1] = NON_POLYP
    with pytest.raises(ValueError, match="n_clusters"):
        propagate(x, y, n_clusters=11)
    with pytest.raises(ValueError, match="scale"):
        propagate(x, y, n_clusters=2, scale="minmax")
    with pytest.raises(ValueError, match="seed labels"):
        propagate(x, y[:5], n_clusters=2)
    # duplicate points (fewer distinct points than k) are fine
    r = propagate(x, y, n_clusters=5, target=10)
    assert r.stop_reason in ("exhausted", "stalled")


def test_tiles_helpers():
    img = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    t = split_tiles(img)
    assert [a.shape[:2] for a in t] == [(2, 3), (2, 4), (3, 3), (3, 4)]
    assert np.array_equal(np.vstack([np.hstack(t[:2]), np.hstack(t[2:])]), img)
    assert tile_path("a/x.jpg", 2) == "a/x.jpg#t2"
    assert parse_tile_path("a/x.jpg#t2") == (parse_tile_path("a/x.jpg")[0], 2)
    assert parse_tile_path("a/x#y.jpg") == (parse_tile_path("a/x#y.jpg")[0], None)
    assert parse_tile_path("a/x.jpg#t3")[0].name == "x.jpg"
    mask = np.zeros((10, 10), bool)
    mask[0, 9] = True  # one pixel in the top-right tile
    assert tile_labels_from_mask(mask) == [NON_POLYP, POLYP, NON_POLYP, NON_POLYP]
    assert tile_labels_from_mask(mask, 0.1) == [NON_POLYP] * 4


def test_truth_matching_and_report(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    truth = {str(tmp_path / "a.jpg"): "polyp", "b.jpg#t1": "non_polyp"}
    got = match_truth([str(tmp_path / "a.jpg"), "elsewhere/b.jpg#t1", "c.jpg"], truth)
    assert got == ["polyp", "non_polyp", None]
    rep = truth_report(["polyp", "polyp", "non_polyp"], ["polyp", "non_polyp", "non_polyp"])
    assert rep["accuracy"] == pytest.approx(2 / 3)
    assert rep["classes"]["polyp"]["precision"] == 0.5 and rep["classes"]["non_polyp"]["recall"] == 0.5


def test_tile_features_match_extract_and_are_cached(tmp_path, monkeypatch):
    import cv2

    import rtseg.propagate.files as P
    from rtseg.features import extract

    monkeypatch.setenv("RTSEG_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (33, 40, 3), dtype=np.uint8) for _ in range(2)]
    paths = []
    for i, img in enumerate(imgs):
        paths.append(tmp_path / f"i{i}.png")
        cv2.imwrite(str(paths[-1]), img[..., ::-1])
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.warns(UserWarning, match="skipped 1"):
        f, ok, skipped = P.tile_features(paths + [tmp_path / "bad.png"], workers=2)
    assert f.shape == (2, 4, 226) and ok == paths and skipped == [tmp_path / "bad.png"]
    assert np.allclose(f[1], extract([np.ascontiguousarray(t) for t in split_tiles(imgs[1])]))
    assert P.tile_cache_path().is_file()

    def boom(path):
        raise AssertionError("cache miss")

    monkeypatch.setattr(P, "_tile_features_of_file", boom)
    f2, ok2, _ = P.tile_features(paths)
    assert np.array_equal(f, f2) and ok2 == paths
