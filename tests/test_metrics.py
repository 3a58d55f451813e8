"""Medico 2021 scoring (rtseg.evaluate.metrics) against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from rtseg.errors import UserError
from rtseg.evaluate.metrics import (METRIC_KEYS, Confusion, MedicoScorer, as_bool_mask, check_reduction,
                           classification_accuracy, image_scores, score)


def mask(h, w, *boxes):
    m = np.zeros((h, w), bool)
    for y0, y1, x0, x1 in boxes:
        m[y0:y1, x0:x1] = True
    return m


def approx(d, **expected):
    for k, v in expected.items():
        assert d[k] == pytest.approx(v), (k, d[k], v)


def test_partial_overlap_by_hand():
    # 10x10; truth = rows 0-3 (40 px); pred = rows 2-5 (40 px); overlap rows 2-3 (20 px)
    t = mask(10, 10, (0, 4, 0, 10))
    p = mask(10, 10, (2, 6, 0, 10))
    c = Confusion.from_masks(p, t)
    assert (c.tp, c.fp, c.fn, c.tn) == (20, 20, 20, 40)
    approx(image_scores(p, t), accuracy=60 / 100, jaccard=20 / 60, dice=40 / 80, f1=40 / 80,
           recall=20 / 40, precision=20 / 40)


def test_unequal_partial_overlap():
    # truth 4x4 = 16 px; pred 2x8 = 16 px overlapping 2x4 = 8 px, in a 8x8 image
    t = mask(8, 8, (0, 4, 0, 4))
    p = mask(8, 8, (2, 4, 0, 8))
    approx(image_scores(p, t), accuracy=(8 + 40) / 64, jaccard=8 / 24, dice=16 / 32,
           recall=8 / 16, precision=8 / 16)
    p2 = mask(8, 8, (0, 2, 0, 2))  # 4 px all inside the truth
    approx(image_scores(p2, t), jaccard=4 / 16, dice=8 / 20, recall=4 / 16, precision=1.0,
           accuracy=52 / 64)


def test_full_masks():
    full = np.ones((5, 7), bool)
    approx(image_scores(full, full), accuracy=1, jaccard=1, dice=1, f1=1, recall=1, precision=1)
    t = mask(5, 7, (0, 5, 0, 2))  # 10 of 35 px
    approx(image_scores(full, t), accuracy=10 / 35, jaccard=10 / 35, dice=20 / 45, recall=1.0,
           precision=10 / 35)


def test_empty_masks_follow_the_medico_scorer():
    e = np.zeros((4, 4), bool)
    some = mask(4, 4, (0, 2, 0, 2))  # 4 px
    # both empty: accuracy 1, every 0/0 ratio 0 (sklearn zero_division as in the scorer)
    approx(image_scores(e, e), accuracy=1, jaccard=0, dice=0, f1=0, recall=0, precision=0)
    # truth empty, prediction not
    approx(image_scores(some, e), accuracy=12 / 16, jaccard=0, dice=0, f1=0, recall=0, precision=0)
    # truth not empty, prediction empty
    approx(image_scores(e, some), accuracy=12 / 16, jaccard=0, dice=0, f1=0, recall=0, precision=0)


def test_empty_masks_with_zero_division_one():
    e = np.zeros((4, 4), bool)
    some = mask(4, 4, (0, 2, 0, 2))
    approx(image_scores(e, e, zero_division=1.0), accuracy=1, jaccard=1, dice=1, f1=1, recall=1,
           precision=1)
    approx(image_scores(some, e, zero_division=1.0), jaccard=0, dice=0, precision=0, recall=1)
    approx(image_scores(e, some, zero_division=1.0), jaccard=0, dice=0, recall=0, precision=1)


def test_matches_sklearn_like_the_official_scorer():
    from sklearn.metrics import (accuracy_score, f1_score, jaccard_score, precision_score,
                                 recall_score)

    rng = np.random.default_rng(0)
    for _ in range(5):
        t = rng.random((13, 17)) > 0.6
        p = rng.random((13, 17)) > 0.5
        yt, yp = t.reshape(-1).astype(np.uint8), p.reshape(-1).astype(np.uint8)
        approx(image_scores(p, t), accuracy=accuracy_score(yt, yp),
               jaccard=jaccard_score(yt, yp), f1=f1_score(yt, yp), dice=f1_score(yt, yp),
               recall=recall_score(yt, yp), precision=precision_score(yt, yp, zero_division=0))


def test_size_mismatch_resizes_prediction_nearest():
    t = mask(8, 8, (0, 4, 0, 4))  # top-left quarter
    p_small = mask(4, 4, (0, 2, 0, 2))  # the same quarter at half size
    approx(image_scores(p_small, t), accuracy=1, jaccard=1, dice=1)
    p_big = np.kron(mask(4, 4, (0, 2, 0, 4)), np.ones((4, 4), bool))  # 16x16, top half
    c = Confusion.from_masks(p_big, t)
    assert c.n_pixels == 64 and (c.tp, c.fp, c.fn) == (16, 16, 0)
    approx(image_scores(p_big, t), jaccard=0.5, dice=2 / 3, recall=1, precision=0.5)


def test_non_bool_inputs_binarised_like_the_scorer():
    t = mask(4, 4, (0, 2, 0, 4))
    assert (as_bool_mask(t.astype(np.uint8) * 255) == t).all()
    assert (as_bool_mask(t.astype(np.uint8)) == t).all()
    assert (as_bool_mask((t.astype(np.uint8) * 255)[..., None]) == t).all()
    approx(image_scores(t.astype(np.uint8) * 255, t), dice=1)
    with pytest.raises(ValueError):
        as_bool_mask(np.zeros((2, 2, 3)))


def test_per_image_and_micro_differ_as_by_hand():
    # image A 10x10: perfect, 50 px polyp; image B 2x2: truth 1 px, pred 3 px with that one
    ta = mask(10, 10, (0, 5, 0, 10))
    tb, pb = mask(2, 2, (0, 1, 0, 1)), mask(2, 2, (0, 1, 0, 2), (1, 2, 0, 1))
    per = score([ta, pb], [ta, tb], reduction="per-image")
    mic = score([ta, pb], [ta, tb], reduction="micro")
    assert list(per)[:7] == list(METRIC_KEYS) + ["n_images"] and per["n_images"] == 2
    # per image: A all 1; B tp=1 fp=2 fn=0 tn=1
    approx(per, jaccard=(1 + 1 / 3) / 2, dice=(1 + 2 / 4) / 2, recall=1.0,
           precision=(1 + 1 / 3) / 2, accuracy=(1 + 2 / 4) / 2)
    # micro: tp=51 fp=2 fn=0 tn=51
    approx(mic, jaccard=51 / 53, dice=102 / 104, recall=1.0, precision=51 / 53,
           accuracy=102 / 104)
    assert per["dice"] != pytest.approx(mic["dice"])


def test_micro_empty_rule_applies_to_the_whole_set_only():
    e = np.zeros((3, 3), bool)
    t = mask(3, 3, (0, 1, 0, 1))
    per = score([e, t], [e, t])
    mic = score([e, t], [e, t], reduction="micro")
    approx(per, dice=0.5, jaccard=0.5)  # (0 + 1) / 2: the empty image scores 0
    approx(mic, dice=1.0, jaccard=1.0)


def test_scorer_and_reduction_names():
    assert check_reduction("per_image") == "per-image"
    assert check_reduction("MICRO") == "micro"
    with pytest.raises(UserError):
        check_reduction("macro")
    with pytest.raises(ValueError):
        MedicoScorer().result()
    with pytest.raises(ValueError):
        score([np.zeros((2, 2), bool)], [])


def test_classification_accuracy():
    assert classification_accuracy([0.9, 0.2, 0.6, 0.4], [True, False, False, True]) == 0.5
    assert classification_accuracy([], []) is None
