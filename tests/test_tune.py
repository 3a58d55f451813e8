"""rtseg tune, multi-layer CAMs, mask clean-up, data splits and the training-image pack."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from rtseg.model.gradcam import GradCAM, multi_layer_cams
from rtseg.recipes.layout import Item, group_folds, split_groups
from rtseg.model.postprocess import fill_holes, largest_component, refine
from rtseg.model.preprocess import images_to_input
from rtseg.synthetic import make_dataset


def test_multi_layer_cams_equal_single_layer_cams(calibrated_bundle):
    b = calibrated_bundle
    x = images_to_input([s.image for s in make_dataset(2, 1, (64, 64), seed=3)], b.manifest)
    prob, cams = multi_layer_cams(b.model, x, [10, 14, "head"])
    for layer in (10, 14, "head"):
        with GradCAM(b.model, layer) as cam:
            p, c = cam(x)
        assert torch.equal(p, prob)
        assert torch.allclose(c, cams[layer], atol=1e-6)
    # hooks were released
    assert not b.model._blocks[14]._forward_hooks and not b.model._swish._forward_hooks


def test_largest_component_and_fill_holes():
    m = np.zeros((20, 20), bool)
    m[2:10, 2:10] = True
    m[4:6, 4:6] = False  # a hole
    m[15:17, 15:17] = True  # a smaller blob
    lc = largest_component(m)
    assert not lc[15, 15] and lc[2, 2] and not lc[4, 4]
    filled = fill_holes(lc)
    assert filled[4, 4] and filled.sum() == 64
    # a region touching the border is background, not a hole
    ring = np.zeros((10, 10), bool)
    ring[:, 3] = ring[:, 6] = True
    assert not fill_holes(ring)[0, 4]
    assert refine(np.stack([m, m]), ["largest", "fill"]).shape == (2, 20, 20)


def _items(groups: dict[str, int]) -> list[Item]:
    return [Item(Path(f"{g}_{i}.png"), None, "polyp", "cvc", g) for g, n in groups.items() for i in range(n)]


def test_split_groups_keeps_groups_whole_and_is_deterministic():
    items = _items({f"seq{k}": 5 + k % 7 for k in range(20)})
    parts = split_groups(items, {"train": 0.6, "val": 0.15, "test": 0.25})
    seen = {}
    for name, part in parts.items():
        for it in part:
            assert seen.setdefault(it.group, name) == name  # a group never spans two parts
    assert sum(len(p) for p in parts.values()) == len(items)
    assert 0.45 < len(parts["train"]) / len(items) < 0.75
    assert parts == split_groups(items, {"train": 0.6, "val": 0.15, "test": 0.25})


def test_group_folds_balanced_and_disjoint():
    items = _items({f"seq{k}": 3 + k for k in range(10)})
    folds = group_folds(items, 3)
    groups = [{it.group for it in f} for f in folds]
    assert all(not (a & b) for i, a in enumerate(groups) for b in groups[i + 1:])
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 12 and sum(sizes) == len(items)


@pytest.fixture(scope="module")
def val_folder(tmp_path_factory, calibrated_bundle):
    from rtseg.model.bundle import save_bundle

    root = tmp_path_factory.mktemp("tune")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    for i, s in enumerate(make_dataset(6, 0, (64, 64), seed=11)):
        cv2.imwrite(str(root / "images" / f"{i}.png"), cv2.cvtColor(s.image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / "masks" / f"{i}.png"), s.mask.astype(np.uint8) * 255)
    save_bundle(calibrated_bundle, root / "model")
    return root


def test_tune_scores_every_combination_and_writes_the_best(val_folder):
    from rtseg.model.bundle import load_bundle
    from rtseg.evaluate.tune import apply_best, tune

    b = load_bundle(val_folder / "model")
    pairs = [(val_folder / "images" / f"{i}.png", val_folder / "masks" / f"{i}.png") for i in range(6)]
    res = tune(b, pairs, layers=[14, "head"], policies=["above 0.5", "otsu"],
               steps_options=[(), ("largest",)])
    assert len(res.rows) == 2 * 2 * 2 and res.n_images == 6
    dice = [r.dice for r in res.rows]
    assert dice == sorted(dice, reverse=True)
    apply_best(b, res)
    best = res.best
    assert b.manifest.cam_layer == best.layer and str(b.manifest.threshold) == best.threshold
    assert b.manifest.postprocess == best.postprocess
    assert b.manifest.metrics["tuning"]["best"]["dice"] == round(best.dice, 4)


def test_tune_scores_baselines_on_the_same_truth_masks(val_folder, calibrated_bundle):
    import copy

    from rtseg.evaluate.baselines import DEFAULT_RADII, ellipse_mask, score_baselines
    from rtseg.imageio import read_mask
    from rtseg.evaluate.tune import _truth_at, apply_best, tune

    b = copy.deepcopy(calibrated_bundle)
    b.manifest = b.manifest.replace(metrics={"training": {"epochs": 1}})
    pairs = [(val_folder / "images" / f"{i}.png", val_folder / "masks" / f"{i}.png") for i in range(6)]
    res = tune(b, pairs, layers=["head"], policies=["above 0.5"], steps_options=[()])
    S = b.manifest.input_size
    truths = [_truth_at(read_mask(m), S) for _, m in pairs]
    r = res.baselines["ellipse"]["radius"]
    assert r in DEFAULT_RADII
    # the chosen radius is the best of the grid on these S x S masks
    dices = {g: score_baselines(truths, g)["ellipse"]["dice"] for g in DEFAULT_RADII}
    assert res.baselines["ellipse"]["dice"] == pytest.approx(max(dices.values()))
    assert res.baselines == score_baselines(truths, r)
    assert res.baselines["all_foreground"]["recall"] == 1.0
    beaten = res.best.dice > max(v["dice"] for v in res.baselines.values())
    assert res.beats_baselines is beaten
    apply_best(b, res)
    t = b.manifest.metrics["tuning"]
    assert b.manifest.metrics["training"] == {"epochs": 1}  # other keys kept
    assert set(t) >= {"n_images", "note", "best", "baselines", "beats_baselines"}
    assert t["baselines"]["ellipse"]["radius"] == r and t["beats_baselines"] is beaten
    assert t["baselines"]["all_foreground"]["dice"] == round(res.baselines["all_foreground"]["dice"], 4)
    assert tune(b, pairs, layers=["head"], policies=["above 0.5"], steps_options=[()],
                baseline_radii=None).baselines is None
    # truth masks that are centred ellipses: the radius search finds theirs
    ell = val_folder.parent / "ellipse_masks"
    ell.mkdir(exist_ok=True)
    for i in range(6):
        cv2.imwrite(str(ell / f"{i}.png"), ellipse_mask((64, 64), 0.35).astype(np.uint8) * 255)
    res2 = tune(b, [(p, ell / f"{i}.png") for i, (p, _) in enumerate(pairs)], layers=["head"],
                policies=["above 0.5"], steps_options=[()])
    assert res2.baselines["ellipse"]["radius"] == pytest.approx(0.35)
    assert res2.baselines["ellipse"]["dice"] == pytest.approx(1.0)
    assert res2.beats_baselines is False


def test_tune_cli_write_and_bad_layer(val_folder, tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(val_folder / "model", model)
    cmd = [sys.executable, "-m", "rtseg", "tune", "--model", str(model), "--images",
           str(val_folder / "images"), "--masks", str(val_folder / "masks"), "--layers", "14,head",
           "--write", "--device", "cpu", "--json", str(tmp_path / "t.json")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = json.loads((tmp_path / "t.json").read_text())
    rows = out["rows"]
    m = json.loads((model / "manifest.json").read_text())
    assert m["cam_layer"] == rows[0]["layer"]
    # baselines: in the JSON, printed beside the best row, their radius in the manifest
    base = out["baselines"]
    assert set(base) == {"ellipse", "all_foreground"}
    for v in base.values():
        assert {"dice", "jaccard", "recall", "precision"} <= set(v)
    assert out["beats_baselines"] is (rows[0]["dice"] > max(v["dice"] for v in base.values()))
    assert ("do not beat" in r.stderr) is (not out["beats_baselines"])
    assert "centred ellipse" in r.stdout and "all foreground" in r.stdout
    assert f"{base['ellipse']['dice']:.4f}" in r.stdout
    assert m["metrics"]["tuning"]["baselines"]["ellipse"]["radius"] == base["ellipse"]["radius"]
    assert m["metrics"]["tuning"]["best"]["layer"] == rows[0]["layer"]
    bad = subprocess.run(cmd[:10] + ["--layers", "99"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error:")
    assert len(bad.stderr.strip().splitlines()) == 1


def test_pack_resizes_tiles_and_rewrites_paths(tmp_path):
    from rtseg.recipes.paper import pack

    img = np.zeros((40, 60, 3), np.uint8)
    img[:20, :30] = (255, 0, 0)  # t0 red (RGB)
    p = tmp_path / "a.png"
    cv2.imwrite(str(p), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    rows = [{"path": str(p), "label": "polyp", "source": "seed", "round": "0"},
            {"path": f"{p}#t0", "label": "polyp", "source": "seed", "round": "0"}]
    pack({"v": rows}, tmp_path / "pack", size=32)
    with open(tmp_path / "pack" / "labels_v.csv", newline="") as fh:
        out = list(csv.DictReader(fh))
    assert [r["origin"] for r in out] == [str(p), f"{p}#t0"]
    t0 = cv2.imread(str(tmp_path / "pack" / out[1]["path"]))
    assert t0.shape == (32, 32, 3) and t0[..., 2].mean() > 200 and t0[..., 0].mean() < 30


def test_tune_cli_warns_when_a_constant_ellipse_wins(val_folder, tmp_path, capsys):
    """Truth masks that are all the centred ellipse of radius 0.3: the ellipse scores Dice 1,
    so no CAM mask can beat it; tune says so in one warning line and in the JSON."""
    from helpers import run_cli

    from rtseg.evaluate.baselines import ellipse_mask

    masks = tmp_path / "masks"
    masks.mkdir()
    for i in range(6):
        cv2.imwrite(str(masks / f"{i}.png"), ellipse_mask((64, 64), 0.3).astype(np.uint8) * 255)
    js = tmp_path / "t.json"
    code, out, err = run_cli(["tune", "--model", val_folder / "model", "--images",
                              val_folder / "images", "--masks", masks, "--layers", "head",
                              "--device", "cpu", "--json", js], capsys)
    assert code == 0, err
    res = json.loads(js.read_text())
    assert res["beats_baselines"] is False
    assert res["baselines"]["ellipse"]["radius"] == pytest.approx(0.3)
    assert res["baselines"]["ellipse"]["dice"] == pytest.approx(1.0)
    lines = [ln for ln in err.splitlines() if "do not beat" in ln]
    assert len(lines) == 1
    assert lines[0].startswith("warning: the model's best masks do not beat a constant centred "
                               "ellipse of radius 0.3 (Dice ")
    assert lines[0].endswith("vs 1.0000)") and f"{res['rows'][0]['dice']:.4f}" in lines[0]


def _refine_whole(mask, steps):
    out = mask.astype(bool)
    for s in steps:
        out = {"largest": largest_component, "fill": fill_holes}[s](out)
    return out


def test_refine_in_the_bounding_rectangle_equals_the_whole_frame():
    """Clean-up inside the mask's bounding rectangle (the 1080p fast path) gives exactly the
    whole-frame result: holes open to the rectangle's edge, ties between components, masks
    touching the frame's edges, empty masks."""
    rng = np.random.default_rng(0)
    for trial in range(40):
        h, w = int(rng.integers(20, 90)), int(rng.integers(20, 120))
        m = np.zeros((h, w), np.uint8)
        for _ in range(int(rng.integers(0, 5))):
            cv2.circle(m, (int(rng.integers(-5, w + 5)), int(rng.integers(-5, h + 5))),
                       int(rng.integers(2, 15)), 1, -1)
            cv2.circle(m, (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(1, 5)), 0, -1)
        if trial % 5 == 0:  # two equal squares: the first in raster order wins in both
            m[:] = 0
            m[2:6, w - 8:w - 4] = 1
            m[h - 6:h - 2, 2:6] = 1
        for steps in (("largest",), ("fill",), ("largest", "fill"), ("fill", "largest")):
            assert np.array_equal(refine(m.astype(bool), steps), _refine_whole(m, steps)), (trial, steps)
    # a notch open to the rectangle's edge is not a hole; a closed ring's inside is
    u = np.zeros((30, 30), bool)
    u[5:20, 5:20] = True
    u[5:12, 10:14] = False  # opens at the rectangle's top edge
    assert not refine(u, ("fill",))[6, 11]
    ring = np.zeros((30, 30), bool)
    cv2.circle(ring.view(np.uint8), (15, 15), 8, 1, 2)
    assert refine(ring, ("fill",))[15, 15]
