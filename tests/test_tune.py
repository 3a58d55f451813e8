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

from rtseg.cam import GradCAM, multi_layer_cams
from rtseg.datasets import Item, group_folds, split_groups
from rtseg.postprocess import fill_holes, largest_component, refine
from rtseg.preprocess import images_to_input
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
    from rtseg.model import save_bundle

    root = tmp_path_factory.mktemp("tune")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    for i, s in enumerate(make_dataset(6, 0, (64, 64), seed=11)):
        cv2.imwrite(str(root / "images" / f"{i}.png"), cv2.cvtColor(s.image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / "masks" / f"{i}.png"), s.mask.astype(np.uint8) * 255)
    save_bundle(calibrated_bundle, root / "model")
    return root


def test_tune_scores_every_combination_and_writes_the_best(val_folder):
    from rtseg.model import load_bundle
    from rtseg.tune import apply_best, tune

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


def test_tune_cli_write_and_bad_layer(val_folder, tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(val_folder / "model", model)
    cmd = [sys.executable, "-m", "rtseg", "tune", "--model", str(model), "--images",
           str(val_folder / "images"), "--masks", str(val_folder / "masks"), "--layers", "14,head",
           "--write", "--device", "cpu", "--json", str(tmp_path / "t.json")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = json.loads((tmp_path / "t.json").read_text())["rows"]
    m = json.loads((model / "manifest.json").read_text())
    assert m["cam_layer"] == rows[0]["layer"]
    bad = subprocess.run(cmd[:10] + ["--layers", "99"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error:")
    assert len(bad.stderr.strip().splitlines()) == 1


def test_pack_resizes_tiles_and_rewrites_paths(tmp_path):
    from rtseg.recipe import pack

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
