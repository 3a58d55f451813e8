"""Model selection that holds out whole hospitals: nothing fitted sees the held-out source, the
evaluation-only PolypGen masks never reach training, seeds move to the source that is left."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def data_folder(tmp_path_factory):
    from helpers import make_data_folder

    return make_data_folder(tmp_path_factory.mktemp("data"), centres=("A", "B"), bkai=4, evaluation_masks=True)


def test_every_item_knows_its_hospital(data_folder):
    from rtseg.recipes.distill.data import load_all

    items = load_all(data_folder)
    got = {s: {it.hospital for it in its} for s, its in items.items()}
    assert got["kvasir"] == {"kvasir"} and got["cvc"] == {"cvc"} and got["bkai"] == {"bkai"}
    assert got["pg_neg"] == got["pg_pos"] == {"pg-A", "pg-B"}
    assert len(items["bkai"]) == 4


@pytest.mark.parametrize("hospital", ["kvasir", "cvc", "pg-A", "pg-B", "bkai"])
def test_split_holds_out_the_whole_source(data_folder, hospital):
    from rtseg.recipes.distill.data import load_all
    from rtseg.recipes.distill.holdout import split

    items = load_all(data_folder)
    train, test = split(items, hospital, data_folder)
    assert all(it.hospital != hospital for its in train.values() for it in its)
    assert all(it.hospital == hospital for its in test.values() for it in its)
    assert sum(map(len, test.values())) == sum(it.hospital == hospital for its in items.values() for it in its)
    # PolypGen's masks are for evaluation only: the held-out side has them, training never
    assert all(it.mask is None for it in train["pg_pos"])
    if hospital.startswith("pg-"):
        assert test["pg_pos"] and all(it.mask is not None and it.mask.is_file() for it in test["pg_pos"])


def test_a_held_out_source_gives_its_seeds_to_the_other(data_folder):
    from rtseg.recipes.distill.data import SEEDS, load_all, seed_counts, seeds_of
    from rtseg.recipes.distill.holdout import split

    items = load_all(data_folder)
    both, _ = split(items, "pg-A", data_folder)
    assert seed_counts(both) == SEEDS
    no_kvasir, _ = split(items, "kvasir", data_folder)
    assert seed_counts(no_kvasir) == {"cvc": sum(SEEDS.values())}
    assert {it.source for it in seeds_of(no_kvasir)} == {"cvc"}
    assert len(seeds_of(no_kvasir)) == len(items["cvc"])  # all 9 (fewer than 100)


def test_hold_out_fits_without_the_held_out_source(data_folder, tmp_path, monkeypatch):
    """Every feature a fit reads (classifier, head, operating point, call smoothing, threshold)
    comes from the training sources; the held-out source is scored with the product's rules."""
    import rtseg.recipes.distill.data as rld
    import rtseg.recipes.distill.fit as rlf
    import rtseg.recipes.distill.holdout as rh

    monkeypatch.setattr(rld, "SEEDS", {"kvasir": 3, "cvc": 2})
    monkeypatch.setattr(rlf, "HEAD_EPOCHS", 2)
    monkeypatch.setattr(rlf, "VARIANTS", {"small": rlf.Variant("small")})
    res = rh.hold_out(data_folder, ["small"], tmp_path / "cache", ["pg-A", "bkai"], log=lambda *_: None)
    per = res["per_source"]["small"]
    assert set(per) == {"pg-A", "bkai"}
    a = per["pg-A"]
    assert a["polyp"]["n"] == 8 and 0.0 <= a["polyp"]["model"]["dice"] <= 1.0
    assert {"ellipse", "all_foreground", "ungated", "stream"} <= set(a["polyp"])
    assert a["polyp_free"]["n"] == 8 and set(a["polyp_free"]["stream_per_sequence"]) == {f"pg-A-seq{i}" for i in range(4)}
    assert "model" not in per["bkai"]["polyp"] and per["bkai"]["polyp"]["n"] == 4  # no masks: the call only
    assert "polyp_free" not in per["bkai"]
    # the summary is over the held-out sources
    s = res["summary"]["small"]
    assert s["dice"]["mean"] == a["polyp"]["model"]["dice"] and s["dice"]["worst_source"] == "pg-A"
    assert s["polyp_called_polyp"]["mean"] == pytest.approx(
        (a["polyp"]["stream_called_polyp"] + per["bkai"]["polyp"]["stream_called_polyp"]) / 2, abs=1e-4)
    assert "pg-A" in res["hospitals"]


@pytest.mark.parametrize("hospital", ["cvc", "pg-B"])
def test_no_fit_reads_a_held_out_image(data_folder, tmp_path, monkeypatch, hospital):
    import rtseg.recipes.distill.data as rld
    import rtseg.recipes.distill.fit as rlf
    import rtseg.recipes.distill.holdout as rh

    monkeypatch.setattr(rld, "SEEDS", {"kvasir": 3, "cvc": 2})
    monkeypatch.setattr(rlf, "HEAD_EPOCHS", 2)
    monkeypatch.setattr(rlf, "VARIANTS", {"small": rlf.Variant("small")})
    items = rld.load_all(data_folder)
    held = {str(it.image) for its in items.values() for it in its if it.hospital == hospital}
    bkai = {str(it.image) for it in items["bkai"]}
    read: list[str] = []
    real_fit = rlf.fit

    def spied_fit(store, train, v, m, **k):
        real_get = store.get
        store.get = lambda keys: (read.extend(keys), real_get(keys))[1]
        try:
            return real_fit(store, train, v, m, **k)
        finally:
            store.get = real_get

    monkeypatch.setattr(rlf, "fit", spied_fit)
    res = rh.hold_out(data_folder, ["small"], tmp_path / "cache", [hospital], log=lambda *_: None)
    keys = {k.split("#")[0] for k in read}
    assert keys and not (keys & held)
    assert keys & bkai  # the variant's BKAI-IGH positives are trained on
    assert res["per_source"]["small"][hospital]["polyp"]["n"] == (9 if hospital == "cvc" else 8)


def test_unknown_source_is_one_error(data_folder, tmp_path, capsys):
    from helpers import run_recipe

    code, _, err = run_recipe(["holdout", "--data", data_folder, "--sources", "pg-C", "--cache", tmp_path / "c"],
                              capsys)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: unknown source 'pg-C'")


def test_a_fit_reads_no_mask_but_the_seeds(data_folder, monkeypatch):
    """The model's pixel labels are its seed masks: the fit, its fine-tuning and every choice
    made after it (threshold, clean-up, the ellipse's radius) read no other mask."""
    import rtseg.recipes.distill.data as rld
    import rtseg.recipes.distill.finetune as rlft
    import rtseg.recipes.distill.fit as rlf
    from rtseg.imageio import read_mask

    monkeypatch.setattr(rld, "SEEDS", {"kvasir": 3, "cvc": 2})
    monkeypatch.setattr(rlf, "HEAD_EPOCHS", 2)
    read: list[str] = []

    def spied(path, *a, **k):
        read.append(str(path))
        return read_mask(path, *a, **k)

    for mod in (rld, rlft, rlf):
        monkeypatch.setattr(mod, "read_mask", spied)
    items = rld.load_all(data_folder)
    train = {s: [it for it in its if it.hospital != "pg-A"] for s, its in items.items()}
    store = rld.open_store(items, None)
    f = rlf.fit(store, train, rlf.Variant("small", finetune_steps=2), store.m, log=lambda *_: None)
    seeds = {str(it.mask) for it in rld.seeds_of(train)}
    assert set(read) == seeds and len(seeds) == 5
    assert f.tune["n_tune"] == 5


def test_hold_out_at_another_input_size_saves_each_fold_as_a_bundle(data_folder, tmp_path, monkeypatch):
    """``--input-size`` reaches the cached features, the fit and the fold's bundle; each fold's
    model is written where ``--save-folds`` says and runs in the product at that size."""
    import numpy as np

    import rtseg.recipes.distill.data as rld
    import rtseg.recipes.distill.fit as rlf
    import rtseg.recipes.distill.holdout as rh
    from rtseg.evaluate.predict import iter_predictions
    from rtseg.model.bundle import load_bundle

    monkeypatch.setattr(rld, "SEEDS", {"kvasir": 3, "cvc": 2})
    monkeypatch.setattr(rlf, "HEAD_EPOCHS", 2)
    monkeypatch.setattr(rlf, "VARIANTS", {"small": rlf.Variant("small")})
    cache, folds = tmp_path / "cache", tmp_path / "folds"
    res = rh.hold_out(data_folder, ["small"], cache, ["pg-A"], log=lambda *_: None, folds_dir=folds, size=160)
    assert sorted(p.name for p in cache.glob("kvasir.*")) == ["kvasir.cpu-resize-160.npz"]
    b = load_bundle(folds / "small" / "pg-A")
    assert b.manifest.arch == "efficientnet-lite1" and b.manifest.head["channels"] == [40, 112, 320]
    assert b.manifest.input_size == 160 and b.manifest.call_smoothing == res["per_source"]["small"]["pg-A"]["call_smoothing"]
    held = [it.image for it in rld.load_all(data_folder)["pg_pos"] if it.hospital == "pg-A"]
    preds = list(iter_predictions(b, held))
    assert len(preds) == len(held)
    from rtseg.evaluate.predict import predict_segmenter

    seg = predict_segmenter(b)
    assert seg(np.ascontiguousarray(preds[0].image[None, ..., ::-1])).cam.shape == (1, 160, 160)
    seg.close()
    assert all(0.0 <= p.prob <= 1.0 and p.mask.shape == p.image.shape[:2] for p in preds)
    assert np.isfinite([p.prob for p in preds]).all()
    # the folds stage: the product on the held-out source, and the threshold sweep through 0.5
    from rtseg.recipes.distill.folds import best_pair, score_folds

    r = score_folds(data_folder, folds / "small", log=lambda *_: None)["per_source"]["pg-A"]
    assert r["polyp"]["n"] == 8 and 0.0 <= r["polyp"]["dice"] <= 1.0
    assert set(r["polyp_free"]["stream_per_sequence"]) == {f"pg-A-seq{i}" for i in range(4)}
    assert r["sweep"]["0.5"] == [r["polyp"]["stream_called_polyp"], r["polyp_free"]["stream_called_non_polyp"]]
    assert r["sweep"]["0.05"][0] >= r["sweep"]["0.95"][0] and r["sweep"]["0.05"][1] <= r["sweep"]["0.95"][1]
    assert best_pair({"0.3": [0.95, 0.7], "0.6": [0.91, 0.8], "0.9": [0.8, 0.99]}) == ("0.6", [0.91, 0.8])
    assert best_pair({"0.9": [0.8, 0.99]}) is None
    # a polyp frame whose evaluation mask is empty is reported apart, with the call the product made
    import shutil

    import cv2

    root = tmp_path / "cleared"
    shutil.copytree(data_folder, root)
    mask = root / "polypgen" / "positive-masks" / f"{held[0].stem}.png"
    cv2.imwrite(str(mask), np.zeros_like(cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE)))
    c = score_folds(root, folds / "small", log=lambda *_: None)["per_source"]["pg-A"]
    made = next(p for p in preds if p.path.name == held[0].name).prob
    assert c["polyp"]["n"] == 7 and c["no_visible_polyp"] == {"n": 1, "called_non_polyp": float(made <= 0.5)}
    # a held-out frame that cannot be read is one error, not a frame left out of the figures
    import rtseg.imageio
    from rtseg.errors import UserError

    real, bad = rtseg.imageio.try_read_image, str(held[0])
    monkeypatch.setattr(rtseg.imageio, "try_read_image", lambda p: None if str(p) == bad else real(p))
    with pytest.raises(UserError, match="1 held-out frame"):
        score_folds(data_folder, folds / "small", log=lambda *_: None)


@pytest.mark.parametrize("size", ["250", "96"])
def test_bad_input_size_is_one_error(data_folder, tmp_path, capsys, size):
    from helpers import run_recipe

    code, _, err = run_recipe(["holdout", "--data", data_folder, "--input-size", size, "--cache", tmp_path / "c"],
                              capsys)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: --input-size must be a multiple of 32")


@pytest.mark.parametrize("case", ["missing", "empty"])
def test_folds_without_fold_bundles_is_one_error(data_folder, tmp_path, capsys, case):
    from helpers import run_recipe

    argv = ["folds", "--data", data_folder] + ([] if case == "missing" else ["--folds-dir", tmp_path])
    code, _, err = run_recipe(argv, capsys)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and "fold bundle" in err[0]


def test_polyp_sequence_frames_without_a_visible_polyp_are_set_apart(data_folder, tmp_path):
    """A held-out PolypGen frame whose evaluation mask is empty (the polyp out of view or
    removed) is no polyp frame: it is neither scored for Dice nor counted as a missed polyp."""
    import shutil

    import cv2
    import numpy as np

    from rtseg.recipes.distill.data import load_all
    from rtseg.recipes.distill.holdout import NO_POLYP, split

    root = tmp_path / "data"
    shutil.copytree(data_folder, root)
    masks = sorted((root / "polypgen" / "positive-masks").glob("*.png"))
    items = load_all(root)
    a_stems = {it.image.stem for it in items["pg_pos"] if it.hospital == "pg-A"}
    cleared = next(m for m in masks if m.stem in a_stems)
    cv2.imwrite(str(cleared), np.zeros_like(cv2.imread(str(cleared), cv2.IMREAD_GRAYSCALE)))
    train, test = split(items, "pg-A", root)
    assert [it.image.stem for it in test[NO_POLYP]] == [cleared.stem]
    assert cleared.stem not in {it.image.stem for it in test["pg_pos"]}
    assert len(test["pg_pos"]) == len(a_stems) - 1
    # training keeps the frame as an image-level positive: it cannot read the mask that says otherwise
    train_b, test_b = split(items, "pg-B", root)
    assert cleared.stem in {it.image.stem for it in train_b["pg_pos"]} and not test_b[NO_POLYP]


def test_site_threshold_experiment_calibrates_on_one_half_and_scores_the_other(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    import numpy as np

    path = Path(__file__).resolve().parents[1] / "experiments" / "site_threshold.py"
    spec = importlib.util.spec_from_file_location("site_threshold", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    neg = {"s1": np.array([0.1, 0.2]), "s2": np.array([0.9, 0.95]), "s3": np.array([0.3, 0.4])}
    pos = np.array([0.6, 0.8, 0.97])
    clean, hard = mod.calibrate(pos, neg, 1.0)
    assert clean["calibrated_on"] == ["s1", "s3"] and clean["threshold"] == 0.5  # never below the product's 0.5
    assert clean["other_half_called_non_polyp"] == 0.0 and clean["polyp_called_polyp"] == 1.0
    assert hard["calibrated_on"] == ["s2"] and hard["threshold"] == 0.95
    assert hard["other_half_called_non_polyp"] == 1.0 and round(hard["polyp_called_polyp"], 3) == 0.333
    with pytest.raises(SystemExit) as exc:
        mod.run_script(lambda: mod.main(["--data", str(tmp_path), "--folds-dir", str(tmp_path / "none")]))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "fold bundle" in err[0]
