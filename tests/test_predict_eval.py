"""``rtseg predict`` / ``rtseg eval`` on generated images with a calibrated model bundle."""

from __future__ import annotations

import csv
import json
import os

import cv2
import numpy as np
import pytest
from helpers import run_cli

from rtseg.errors import UserError
from rtseg.evaluate.metrics import METRIC_KEYS, image_scores
from rtseg.synthetic import make_dataset

SIZES = [(72, 96), (64, 64), (90, 70), (80, 80), (64, 100)]


@pytest.fixture(scope="module")
def data(tmp_path_factory, calibrated_bundle):
    """images/ (5 of different sizes, one in a sub-folder, one without a mask), masks/, model/."""
    from rtseg.model.bundle import save_bundle

    root = tmp_path_factory.mktemp("pe")
    save_bundle(calibrated_bundle, root / "model")
    names = ["a", "b", "sub/c", "d", "nomask"]
    for i, (name, size) in enumerate(zip(names, SIZES)):
        s = make_dataset(1, 0, size=size, seed=10 + i)[0] if i != 3 else \
            make_dataset(0, 1, size=size, seed=10 + i)[0]  # d: non-polyp, empty mask
        img_p = root / "images" / f"{name}.jpg"
        img_p.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(img_p), cv2.cvtColor(s.image, cv2.COLOR_RGB2BGR))
        if name != "nomask":
            m_p = root / "masks" / f"{name}.png"
            m_p.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(m_p), s.mask.astype(np.uint8) * 255)
    return root


def run(argv, capsys):
    return run_cli(argv, capsys)


def error_lines(err):
    return [line for line in err.splitlines() if line.startswith("error:")]


# ------------------------------------------------------------------------------ predict
def test_predict_writes_masks_heatmaps_and_csv(data, tmp_path, capsys):
    out = tmp_path / "pred"
    code, stdout, err = run(["predict", "--model", data / "model", "--images", data / "images",
                             "--out", out, "--heatmaps", "--batch", "2", "--device", "cpu"],
                            capsys)
    assert code == 0, err
    names = ["a", "b", "sub/c", "d", "nomask"]
    for name, (h, w) in zip(names, SIZES):
        m = cv2.imread(str(out / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        assert m is not None and m.shape == (h, w) and m.dtype == np.uint8
        assert set(np.unique(m)) <= {0, 255}
        hm = cv2.imread(str(out / "heatmaps" / f"{name}.png"))
        assert hm.shape == (h, w, 3)
    with open(out / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(os.path.basename(r["path"]) for r in rows) == ["a.jpg", "b.jpg", "c.jpg",
                                                                  "d.jpg", "nomask.jpg"]
    assert all(0.0 <= float(r["prob"]) <= 1.0 for r in rows)
    assert not [p for p in out.rglob("*") if ".tmp." in p.name]  # atomic writes left no temp


def test_predict_threshold_and_layer_override(data, calibrated_bundle, tmp_path):
    from rtseg.evaluate.predict import predict_folder

    s = predict_folder(calibrated_bundle, data / "images", tmp_path / "o", layer="head",
                       threshold="above 0.99")
    assert s.layer == "head" and s.threshold == "above 0.99" and s.n_images == 5
    s2 = predict_folder(calibrated_bundle, data / "images", tmp_path / "o2", threshold="otsu")
    assert s2.layer == 14
    m = cv2.imread(str(tmp_path / "o2" / "a.png"), cv2.IMREAD_GRAYSCALE)
    assert 0 < (m > 0).sum() < m.size  # Otsu splits every CAM


# ------------------------------------------------------------------------------ eval
def test_eval_json_figure_and_missing_masks(data, tmp_path, capsys):
    js, fig = tmp_path / "s.json", tmp_path / "fig.png"
    code, stdout, err = run(["eval", "--model", data / "model", "--images", data / "images",
                             "--masks", data / "masks", "--json", js, "--figure", fig,
                             "--device", "cpu"], capsys)
    assert code == 0, err
    assert "nomask" in err and "warning:" in err  # listed, counted, left out
    assert "Jaccard" in stdout and "Dice" in stdout
    m = json.loads(js.read_text())
    assert list(m)[:7] == list(METRIC_KEYS) + ["n_images"]
    assert m["n_images"] == 4 and m["n_missing_masks"] == 1
    assert m["n_polyp_images"] == 3 and m["reduction"] == "per-image"
    assert 0 <= m["classification_accuracy"] <= 1 and m["layer"] == 14
    assert m["dice"] == pytest.approx(m["f1"])
    assert len(m["per_image"]) == 4
    for k in METRIC_KEYS:
        assert m[k] == pytest.approx(np.mean([r[k] for r in m["per_image"]]))
    img = cv2.imread(str(fig))
    assert img is not None and img.shape[0] > 100 and img.shape[1] > 400
    # baselines: after the documented keys, on the 4 images with a mask only, default radius
    from rtseg.evaluate.baselines import score_baselines
    from rtseg.imageio import read_mask

    assert list(m)[-2:] == ["baselines", "beats_baselines"]
    assert list(m).index("per_image") < list(m).index("baselines")
    base = m["baselines"]
    assert base["ellipse"]["radius"] == 0.25 and base["ellipse"]["radius_source"] == "default"
    truths = [read_mask(data / "masks" / f"{n}.png") for n in ("a", "b", "sub/c", "d")]
    expect = score_baselines(truths, 0.25)
    for name in ("ellipse", "all_foreground"):
        assert base[name]["n_images"] == 4
        for k in METRIC_KEYS:
            assert base[name][k] == pytest.approx(expect[name][k])
    assert m["beats_baselines"] is (m["dice"] > max(v["dice"] for v in base.values()))
    assert "ellipse r=0.25" in stdout and "all foreground" in stdout
    assert "r=0.25 (default: none tuned)" in stdout
    assert f"{base['ellipse']['dice']:.4f}" in stdout
    assert ("do not beat" in err) is (not m["beats_baselines"])


def _eval_folder(data, root, truth_of):
    """images/ (data's 4 images with a mask) and masks/ with truth_of(name, (h, w))."""
    for name in ("a", "b", "sub/c", "d"):
        img = cv2.imread(str(data / "images" / f"{name}.jpg"))
        (root / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "masks" / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "images" / f"{name}.png"), img)
        cv2.imwrite(str(root / "masks" / f"{name}.png"),
                    truth_of(name, img.shape[:2]).astype(np.uint8) * 255)
    return root / "images", root / "masks"


def test_eval_baselines_radius_from_manifest_and_warning(data, tmp_path, capsys):
    """Truth masks that are centred ellipses of radius 0.4 and a manifest that recorded 0.4 at
    tuning time: the ellipse baseline scores Dice 1, the model cannot beat it."""
    import shutil

    from rtseg.evaluate.baselines import ellipse_mask

    model = tmp_path / "model"
    shutil.copytree(data / "model", model)
    man = json.loads((model / "manifest.json").read_text())
    man.setdefault("metrics", {})["tuning"] = {"baselines": {"ellipse": {"radius": 0.4}}}
    (model / "manifest.json").write_text(json.dumps(man))
    images, masks = _eval_folder(data, tmp_path, lambda n, hw: ellipse_mask(hw, 0.4))
    js = tmp_path / "s.json"
    code, out, err = run(["eval", "--model", model, "--images", images, "--masks", masks,
                          "--json", js, "--device", "cpu"], capsys)
    assert code == 0, err
    m = json.loads(js.read_text())
    e = m["baselines"]["ellipse"]
    assert e["radius"] == 0.4 and e["radius_source"] == "manifest"
    assert e["dice"] == pytest.approx(1.0) and e["n_images"] == 4
    assert m["beats_baselines"] is False
    lines = [ln for ln in err.splitlines() if "do not beat" in ln]
    assert lines == [f"warning: the model's masks do not beat a constant centred ellipse of "
                     f"radius 0.4 (Dice {m['dice']:.4f} vs 1.0000)"]
    assert "ellipse r=0.4" in out and "r=0.4 (from the manifest)" in out


def test_eval_beats_baselines_on_its_own_masks(data, tmp_path, capsys, calibrated_bundle):
    """Truth masks = the model's own predictions: Dice 1 beats both constant masks, no warning."""
    from rtseg.evaluate.scoring import evaluate
    from rtseg.evaluate.predict import predict_folder

    predict_folder(calibrated_bundle, data / "images", tmp_path / "p", threshold="otsu")

    def own(name, hw):
        return cv2.imread(str(tmp_path / "p" / f"{name}.png"), cv2.IMREAD_GRAYSCALE) > 127

    images, masks = _eval_folder(data, tmp_path / "d", own)
    js = tmp_path / "s.json"
    code, out, err = run(["eval", "--model", data / "model", "--images", images, "--masks", masks,
                          "--threshold", "otsu", "--json", js, "--device", "cpu"], capsys)
    assert code == 0, err
    m = json.loads(js.read_text())
    assert m["dice"] == pytest.approx(1.0)
    assert all(v["dice"] < 1.0 for v in m["baselines"].values())
    assert m["beats_baselines"] is True and "do not beat" not in err
    pairs = [(images / f"{n}.png", masks / f"{n}.png") for n in ("a", "b")]
    micro = evaluate(calibrated_bundle, pairs, threshold="otsu", reduction="micro")
    assert micro["baselines"]["all_foreground"]["recall"] == 1.0
    off = evaluate(calibrated_bundle, pairs, threshold="otsu", baselines=False)
    assert "baselines" not in off and "beats_baselines" not in off


def test_eval_scores_equal_predict_masks(data, tmp_path, calibrated_bundle):
    """Scoring the masks ``predict`` wrote gives what ``evaluate`` reports (same pipeline)."""
    from rtseg.evaluate.scoring import evaluate
    from rtseg.imageio import pair_images_masks, read_mask
    from rtseg.evaluate.predict import predict_folder

    predict_folder(calibrated_bundle, data / "images", tmp_path / "p")
    pairs, _ = pair_images_masks(data / "images", data / "masks")
    res = evaluate(calibrated_bundle, pairs, reduction="micro")
    assert res["reduction"] == "micro" and res["n_images"] == 4
    per = evaluate(calibrated_bundle, pairs)
    for entry, pair in zip(per["per_image"], pairs):
        rel = pair.image.relative_to(data / "images").with_suffix(".png")
        pred = cv2.imread(str(tmp_path / "p" / rel), cv2.IMREAD_GRAYSCALE) > 127
        s = image_scores(pred, read_mask(pair.mask))
        for k in METRIC_KEYS:
            assert entry[k] == pytest.approx(s[k])


def test_evaluate_accepts_tuples_and_refuses_masks_of_another_size(data, tmp_path,
                                                                   calibrated_bundle):
    """A truth mask of another size (a 1 x 1 mask scored accuracy 1.0) or turned by 90
    degrees is one error naming it, never a score."""
    from rtseg.evaluate.scoring import evaluate

    res = evaluate(calibrated_bundle, [(data / "images" / "a.jpg", data / "masks" / "a.png")],
                   per_image=False)
    assert res["n_images"] == 1 and "per_image" not in res
    m = cv2.imread(str(data / "masks" / "a.png"), cv2.IMREAD_GRAYSCALE)
    for name, bad in (("tiny.png", m[:1, :1]), ("turned.png", np.ascontiguousarray(m.T))):
        cv2.imwrite(str(tmp_path / name), bad)
        with pytest.raises(UserError, match=f"mask .*{name} is .* but its image"):
            evaluate(calibrated_bundle, [(data / "images" / "a.jpg", tmp_path / name)])


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("case", ["no_model", "corrupt", "layer", "threshold", "out", "masks",
                                  "reduction", "in_place", "figure"])
def test_bad_input_exit_2_one_error_line(case, data, tmp_path, capsys):
    images, masks, model = data / "images", data / "masks", data / "model"
    if case == "corrupt":
        bad = tmp_path / "bad"
        bad.mkdir()
        (bad / "manifest.json").write_text((model / "manifest.json").read_text())
        (bad / "weights.pt").write_bytes(b"not a torch file")
        model = bad
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    argv = {
        "no_model": ["predict", "--model", tmp_path / "nope", "--images", images, "--out",
                     tmp_path / "o"],
        "corrupt": ["predict", "--model", model, "--images", images, "--out", tmp_path / "o"],
        "layer": ["predict", "--model", model, "--images", images, "--out", tmp_path / "o",
                  "--layer", "23"],
        "threshold": ["eval", "--model", model, "--images", images, "--masks", masks,
                      "--threshold", "band 0.7 0.4"],
        "out": ["predict", "--model", model, "--images", images, "--out", blocker / "sub"],
        "masks": ["eval", "--model", model, "--images", images, "--masks", tmp_path],
        "reduction": ["eval", "--model", model, "--images", images, "--masks", masks,
                      "--reduction", "macro"],
        "in_place": ["predict", "--model", model, "--images", masks, "--out", masks],
        "figure": ["eval", "--model", model, "--images", images, "--masks", masks,
                   "--figure", tmp_path / "fig.xyz"],
    }[case]
    code, stdout, err = run(argv + ["--device", "cpu"], capsys)
    assert code == 2, (stdout, err)
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert "Traceback" not in err
    if case in ("no_model", "corrupt"):
        assert str(model if case == "corrupt" else tmp_path / "nope") in lines[0]
    if case == "corrupt":
        assert "weights.pt" in lines[0]


def test_no_mask_matches_is_an_error(data, tmp_path, calibrated_bundle):
    from rtseg.evaluate.scoring import evaluate_folders

    other = tmp_path / "masks"
    other.mkdir()
    cv2.imwrite(str(other / "zzz.png"), np.zeros((4, 4), np.uint8))
    with pytest.raises(UserError, match="no image"):
        evaluate_folders(calibrated_bundle, data / "images", other)


def test_help_has_examples(capsys):
    for cmd in ("predict", "eval", "run"):
        code, out, _ = run([cmd, "--help"], capsys)
        assert code == 0 and "Example: rtseg " + cmd in " ".join(out.split())


# ------------------------------------------------------------------------------ run / presets
@pytest.fixture(scope="module")
def data_folder(tmp_path_factory):
    """A tiny folder laid out like ../shared/data (kvasir-seg, cvc-clinicdb, non-polyp)."""
    root = tmp_path_factory.mktemp("datafolder")

    def w(p, img):
        p.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(p), cv2.cvtColor(img, cv2.COLOR_RGB2BGR) if img.ndim == 3 else img)

    pos = make_dataset(16, 0, size=(72, 88), seed=5)
    neg = make_dataset(0, 14, size=(64, 64), seed=6)
    for i, s in enumerate(pos[:10]):
        w(root / "kvasir-seg/images" / f"k{i}.jpg", s.image)
        w(root / "kvasir-seg/masks" / f"k{i}.jpg", s.mask.astype(np.uint8) * 255)
    rows = ["frame,sequence,image,mask"]
    for i, s in enumerate(pos[10:]):
        w(root / "cvc-clinicdb/images" / f"{i + 1}.png", s.image)
        w(root / "cvc-clinicdb/masks" / f"{i + 1}.png", s.mask.astype(np.uint8) * 255)
        rows.append(f"{i + 1},{i // 2 + 1},images/{i + 1}.png,masks/{i + 1}.png")
    (root / "cvc-clinicdb/sequences.csv").write_text("\n".join(rows) + "\n")
    for i, s in enumerate(neg):
        w(root / "non-polyp" / f"{i}.jpg", s.image)
    return root


@pytest.fixture
def fake_train(monkeypatch, tmp_path, calibrated_bundle):
    """rtseg.train.loop.train replaced by one that saves the calibrated model with the run's
    manifest settings (training itself is tested by the train module's own tests)."""
    import types

    import rtseg.train.loop
    from rtseg.model.bundle import Bundle, save_bundle

    seen = []

    def train(cfg, progress=True, on_epoch=None):
        from rtseg.train.data import read_labels_csv

        seen.append((cfg, read_labels_csv(cfg.labels)))
        m = calibrated_bundle.manifest.replace(cam_layer=cfg.layer, threshold=cfg.threshold,
                                               tiles=cfg.tiles)
        save_bundle(Bundle(calibrated_bundle.model, m), cfg.out)
        return types.SimpleNamespace(bundle=cfg.out, best_epoch=1, val_accuracy=None,
                                     seconds=0.0)

    monkeypatch.setattr(rtseg.train.loop, "train", train)
    monkeypatch.setenv("RTSEG_CACHE_DIR", str(tmp_path / "cache"))
    return seen


@pytest.mark.parametrize("preset,layer,threshold,tiles", [("run1", 14, "band 0.4 0.7", True),
                                                          ("run4", 20, "above 0.28", False)])
def test_run_preset_end_to_end(preset, layer, threshold, tiles, data_folder, fake_train, tmp_path,
                               capsys):
    out = tmp_path / preset
    code, stdout, err = run(["run", "--preset", preset, "--data", data_folder, "--out", out,
                             "--seeds", 3, "--clusters", 4, "--target", 30 if tiles else 12,
                             "--epochs", 1, "--size", 64, "--val", 2, "--device", "cpu"], capsys)
    assert code == 0, err
    for name in ("labels.csv", "propagation.json", "model/manifest.json", "metrics.json",
                 "figure.png", "run.json"):
        assert (out / name).is_file(), name
    cfg, items = fake_train[-1]
    assert (cfg.layer, str(cfg.threshold), cfg.tiles) == (layer, threshold, tiles)
    assert all(os.path.isabs(str(it.path)) for it in items)
    assert all((it.tile is not None) == tiles for it in items)
    assert len(items) == (30 if tiles else 12)
    m = json.loads((out / "metrics.json").read_text())
    assert list(m)[:7] == list(METRIC_KEYS) + ["n_images"]
    assert m["preset"] == preset and m["layer"] == layer and m["threshold"] == threshold
    assert m["n_images"] >= 1 and 0 <= m["non_polyp_specificity"] <= 1
    r = json.loads((out / "run.json").read_text())
    assert r["sizes"]["seeds_polyp"] == 3 and r["preset"]["name"] == preset
    assert "paper" in stdout and preset in stdout


def test_presets_table_and_errors(data_folder, tmp_path, capsys):
    from rtseg.recipes.presets import PRESETS, fold_split, get_preset, holdout_split, open_data

    assert [(p.layer, p.threshold, p.tiles) for p in PRESETS.values()] == [
        (14, "band 0.4 0.7", True), (13, "band 0.4 0.7", False), (14, "band 0.4 0.7", False),
        (20, "above 0.28", False), (22, "above 0.28", False)]
    assert get_preset("3").name == "run3" and get_preset("RUN5").layer == 22
    with pytest.raises(UserError):
        get_preset("run6")
    with pytest.raises(Exception):
        PRESETS["run1"].layer = 3  # frozen
    df = open_data(data_folder)
    h = holdout_split(df, 0.25, n_seeds=3)
    assert h.sizes()["seeds_polyp"] == 3 and h.sizes()["seeds_non_polyp"] == 3
    tests = set()
    for k in range(3):
        s = fold_split(df, 3, k, n_seeds=2)
        test_seq = {it.group for it in s.test_polyp if it.source == "cvc"}
        train_seq = {it.group for it in s.seeds_polyp + s.pool if it.source == "cvc"}
        assert not test_seq & train_seq  # a CVC sequence never spans two folds
        tests |= {str(it.image) for it in s.test_polyp}
    assert len(tests) == 16  # every polyp image is tested once over the folds
    with pytest.raises(UserError):
        holdout_split(df, 0.25, n_seeds=50)
    code, _, err = run(["run", "--preset", "run9", "--data", data_folder, "--out",
                        tmp_path / "o"], capsys)
    assert code == 2 and len(error_lines(err)) == 1
