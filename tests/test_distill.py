"""The shipped model's recipe (rtseg.recipes.distill) on a generated data folder: folds cannot
leak, the call smoothing is chosen without held-out frames, the bundle is the fit."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def data_folder(tmp_path_factory):
    """The data README's layout, generated: Kvasir-SEG, CVC (3 sequences), PolypGen, crops."""
    from helpers import make_data_folder

    return make_data_folder(tmp_path_factory.mktemp("data"))


def small(monkeypatch, **variants) -> None:
    """The recipe at a size for tests: 5 seed masks, 2 head epochs, ``variants`` (name: Variant)."""
    import rtseg.recipes.distill.data as rd
    import rtseg.recipes.distill.fit as rf

    monkeypatch.setattr(rd, "SEEDS", {"kvasir": 3, "cvc": 2})  # the one place the seed counts live
    monkeypatch.setattr(rf, "HEAD_EPOCHS", 2)
    if variants:
        monkeypatch.setattr(rf, "VARIANTS", variants)


def spied_fold(data_folder, tmp_path, monkeypatch):
    """(items, store, training half of a 2-fold split, held-out image paths, keys read): the
    store's ``get`` records every key it is asked for (``store.get.__wrapped__`` is the real one)."""
    import functools

    import rtseg.recipes.distill.data as rd
    from rtseg.recipes.layout import group_folds

    items = rd.load_all(data_folder)
    store = rd.open_store(items, tmp_path / "cache")
    outer = {s: group_folds(its, 2) for s, its in items.items()}
    train = {s: fs[0] for s, fs in outer.items()}
    held = {str(it.image) for fs in outer.values() for it in fs[1]}
    seen: list[str] = []
    real_get = store.get

    @functools.wraps(real_get)
    def get(keys):
        seen.extend(keys)
        return real_get(keys)

    monkeypatch.setattr(store, "get", get)
    return items, store, train, held, seen


def test_no_sequence_spans_two_folds(data_folder):
    from rtseg.recipes.layout import group_folds
    from rtseg.recipes.distill.data import load_all

    items = load_all(data_folder)
    assert len(items["pg_neg"]) == 8 and len(items["cvc"]) == 9
    for src in ("cvc", "pg_neg"):
        folds = group_folds(items[src], 2)
        seen = [{it.group for it in f} for f in folds]
        assert not (seen[0] & seen[1]), src


def test_cross_validation_on_generated_data(data_folder, tmp_path, monkeypatch):
    import cv2

    import rtseg.recipes.distill.cv as rcv
    import rtseg.recipes.distill.data as rd
    import rtseg.recipes.distill.fit as rf

    small(monkeypatch)
    # a PolypGen polyp frame whose evaluation mask is empty (the polyp out of view) is scored apart
    from helpers import make_data_folder

    root = make_data_folder(tmp_path / "data", evaluation_masks=True)
    cleared = sorted((root / "polypgen" / "positive-masks").glob("*.png"))[0]
    cv2.imwrite(str(cleared), np.zeros_like(cv2.imread(str(cleared), cv2.IMREAD_GRAYSCALE)))
    data_folder = root
    res = rcv.cross_validate(data_folder, 2, ["video-bkai"], tmp_path / "cache")
    assert len(res["per_fold"]["video-bkai"]) == 2
    n_pg = len(rd.load_all(data_folder)["pg_pos"])
    assert sum(f["pg_pos"]["n"] for f in res["per_fold"]["video-bkai"]) == n_pg - 1
    assert res["summary"]["video-bkai"]["pg_no_visible_polyp"]["n"] == 1
    for fold in res["per_fold"]["video-bkai"]:
        for src in ("kvasir", "cvc"):
            assert set(fold[src]) >= {"model", "stream", "ungated", "ellipse", "all_foreground", "n", "called_polyp"}
            assert 0.0 <= fold[src]["model"]["dice"] <= 1.0
        assert 0.0 <= fold["pg_neg"]["called_non_polyp"] <= 1.0
        assert fold["tune"]["threshold"] in rf.THRESHOLDS
        assert fold["tune"]["call_smoothing"] in rf.CALL_FACTORS  # chosen by the inner CV
    # every polyp-free sequence is held out once, and the all-frames rate is their weighted mean
    s = res["summary"]["video-bkai"]
    pg = rd.load_all(data_folder)["pg_neg"]
    per = s["pg_neg_called_non_polyp_per_sequence"]
    assert set(per) == {it.group for it in pg}
    n = {g: sum(it.group == g for it in pg) for g in per}
    assert abs(s["pg_neg_called_non_polyp_all_frames"] - sum(per[g] * n[g] for g in per) / len(pg)) < 1e-3
    assert 0.0 <= s["polyp_called_polyp_all_frames"] <= 1.0
    assert res["variants"]["video-bkai"]["name"] == "video-bkai"
    assert res["variants"]["video-bkai"]["finetune_steps"] == 0
    # the feature cache is reused: a new store reads it instead of decoding images again
    store = rd.FeatureStore(None, rd.manifest(), tmp_path / "cache")
    keys = [str(it.image) for it in rd.load_all(data_folder)["kvasir"]]
    assert (tmp_path / "cache" / "kvasir.cpu-resize-288.npz").is_file()  # the layout other runs reuse
    store.add(keys, lambda k: (_ for _ in ()).throw(AssertionError("decoded again")), "kvasir")
    assert store.get(keys[:2]).gap.shape == (2, 1280)


def test_unknown_variant_is_one_error_before_any_work(data_folder, tmp_path, capsys):
    from helpers import run_recipe

    code, _, err = run_recipe(["cv", "--data", data_folder, "--variants", "video-bkai,agree", "--cache",
                               tmp_path / "c"], capsys)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: unknown variant 'agree'")
    assert not (tmp_path / "c").exists()  # nothing was computed


def assert_bundle_is_the_fit(f, out, data_folder, tmp_path):
    """The written bundle computes the frame probabilities and maps that the recipe scored for
    fit ``f`` from cached features (fp16 weights in the bundle: small tolerances)."""
    import rtseg.recipes.distill.data as rd
    import rtseg.recipes.distill.fit as rlf
    from rtseg.imageio import read_image
    from rtseg.runtime import create_segmenter

    items = rd.load_all(data_folder)
    store = rd.open_store(items, tmp_path / "cache")
    its = items["kvasir"][:3] + items["pg_neg"][:3]
    c = store.get([str(it.image) for it in its])
    prob, maps = rlf.maps_of(f, c, True, True)
    seg = create_segmenter(out, backend="torch-eager", device="cpu")
    got = [seg(np.ascontiguousarray(read_image(it.image)[None, ..., ::-1])) for it in its]
    p = np.concatenate([o.prob for o in got])
    assert np.abs(p - prob).max() < 3e-2, (p, prob)
    assert np.array_equal(p > 0.5, prob > 0.5)
    cam = np.concatenate([o.cam for o in got])
    assert cam.shape == maps.shape and np.abs(cam - maps).mean() < 2e-2


def test_clips_play_each_sequence_in_frame_order():
    from pathlib import Path

    from rtseg.recipes.layout import Item
    from rtseg.recipes.distill.call_smoothing import clips

    names = [("b", "B_seq2_seq2_img10.jpg"), ("a", "A_seq1_seq1_img2.jpg"), ("b", "B_seq2_seq2_img9.jpg"),
             ("a", "A_seq1_seq1_img11.jpg"), ("a", "A_seq1_seq1_img1.jpg")]
    items = [Item(Path(n), None, "non_polyp", "pg_neg", g) for g, n in names]
    got = [[it.image.name for it in c] for c in clips(items)]
    assert got == [["A_seq1_seq1_img1.jpg", "A_seq1_seq1_img2.jpg", "A_seq1_seq1_img11.jpg"],
                   ["B_seq2_seq2_img9.jpg", "B_seq2_seq2_img10.jpg"]]


def test_call_smoothing_is_chosen_inside_the_training_folds_scored_as_the_loop_and_built(
        data_folder, tmp_path, monkeypatch):
    import rtseg.recipes.distill.build as rb
    import rtseg.recipes.distill.cv as rcv
    import rtseg.recipes.distill.fit as rlf
    import rtseg.recipes.distill.call_smoothing as rlt
    from rtseg.live.smoothing import CallSmoother
    from rtseg.model.bundle import load_bundle
    from rtseg.runtime import create_segmenter

    v = rlf.Variant("video")
    small(monkeypatch, video=v)
    items, store, train, held, seen = spied_fold(data_folder, tmp_path, monkeypatch)
    a, info = rlf.choose_call_smoothing(store, train, v, store.m, log=lambda *_: None)
    assert a in rlt.CALL_FACTORS and set(info["table"]) == {str(x) for x in rlt.CALL_FACTORS}
    assert seen and not (set(seen) & held)  # no held-out image was looked at
    # the held-out fold scored as the loop shows it: sequences in frame order through CallSmoother
    store.get = store.get.__wrapped__
    f = rlf.fit(store, train, v, store.m, log=lambda *_: None, tune=False)
    test = {s: [it for it in its if str(it.image) in held] for s, its in items.items()}
    f.call_smoothing = 0.0
    sc0 = rcv.score(store, f, test)
    assert sc0["cvc"]["stream"] == sc0["cvc"]["model"]  # a = 0: every frame alone
    assert sc0["pg_neg"]["stream_called_non_polyp"] == sc0["pg_neg"]["called_non_polyp"]
    f.call_smoothing = 0.8
    sc = rcv.score(store, f, test)
    ok = []
    for clip in rlt.clips(test["pg_neg"]):
        prob, _ = rlf.maps_of(f, store.get([str(it.image) for it in clip]), False, True)
        ok += list(CallSmoother(0.8)(prob) <= 0.5)
    assert sc["pg_neg"]["stream_called_non_polyp"] == round(float(np.mean(ok)), 4)
    assert sc["kvasir"]["stream"] == sc["kvasir"]["model"]  # single images are left as they are
    # build: the chosen factor goes into the bundle's manifest, which the runtime reads
    monkeypatch.setattr(rlf, "choose_call_smoothing", lambda *a_, **k: (0.7, {"stub": 1}))
    out = rb.build(data_folder, tmp_path / "bundle", tmp_path / "cache", "video")
    assert load_bundle(out).manifest.call_smoothing == 0.7
    assert create_segmenter(out, backend="torch-eager", device="cpu").manifest.call_smoothing == 0.7


def test_build_model_writes_the_fine_tuned_network_it_scored(data_folder, tmp_path, monkeypatch, capsys):
    """``rtseg build-model`` (variant finetune_steps: blocks 7-20, classifier and head trained
    through augmented views): a loadable bundle that computes the probabilities and maps the
    recipe scored from cached block-6 features; a model card already in OUT is kept."""
    from helpers import run_cli

    import rtseg.recipes.distill.build as rb
    import rtseg.recipes.distill.data as rd
    import rtseg.recipes.distill.fit as rlf
    from rtseg.model.bundle import build_model, load_bundle

    small(monkeypatch, ft=rlf.Variant("ft", finetune_steps=3))
    fits = []
    monkeypatch.setattr(rb, "fit", lambda *a, **k: fits.append(rlf.fit(*a, **k)) or fits[-1])
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "MODEL_CARD.md").write_text("card")
    code, stdout, err = run_cli(["build-model", "--data", data_folder, "--out", out, "--variant", "ft",
                                 "--cache", tmp_path / "cache"], capsys)
    assert code == 0, err
    assert f"saved {out}" in stdout and (out / "MODEL_CARD.md").read_text() == "card"
    f = fits[-1]
    assert f.top is not None and f.top.from_block == 6 and len(f.top.blocks) == 14
    b = load_bundle(out)
    assert b.manifest.arch == "efficientnet-lite1" and b.manifest.active_area
    assert b.manifest.head["agree"] is True and b.manifest.head["gate"] is True  # the shipped frame rule
    recorded = b.manifest.training["variant"]
    assert (recorded["name"], recorded["finetune_steps"]) == ("ft", 3)
    assert b.manifest.training["recipe"] == "rtseg build-model --variant ft"
    assert b.manifest.call_smoothing in rlf.CALL_FACTORS  # chosen by the inner CV
    assert "blocks 7-20" in b.manifest.training["backbone"] and "end to end" in b.manifest.training["backbone"]
    imagenet = build_model(rd.ARCH, pretrained=True)

    def w(module):
        return module.weight.detach().float().numpy()

    assert not np.allclose(w(f.top.blocks[7]._project_conv), w(imagenet._blocks[14]._project_conv))  # trained
    assert np.allclose(w(b.model._blocks[14]._project_conv), w(f.top.blocks[7]._project_conv), atol=1e-3)
    assert np.allclose(w(b.model._blocks[6]._project_conv), w(imagenet._blocks[6]._project_conv), atol=1e-3)
    assert_bundle_is_the_fit(f, out, data_folder, tmp_path)


@pytest.mark.parametrize("case", ["missing", "empty", "variant", "out-in-data", "cache-is-a-file"])
def test_build_model_bad_input_is_one_error_line_before_any_work(data_folder, tmp_path, monkeypatch, capsys, case):
    from helpers import run_cli

    import rtseg.recipes.distill.build as rb

    monkeypatch.setattr(rb, "open_store", lambda *a: pytest.fail("work started"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    data, out, extra = data_folder, tmp_path / "out", []
    if case == "missing":
        data = tmp_path / "nope"
    elif case == "empty":
        data = tmp_path / "empty"
    elif case == "variant":
        extra = ["--variant", "agree"]  # measured, not kept
    elif case == "out-in-data":
        out = data_folder / "model"
    else:
        extra = ["--cache", tmp_path / "file"]
    code, _, err = run_cli(["build-model", "--data", data, "--out", out, *extra], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    assert {"missing": "data folder not found", "empty": "needs kvasir-seg/", "variant": "unknown variant 'agree'",
            "out-in-data": "overlaps the data folder", "cache-is-a-file": "is a file"}[case] in err
    assert not out.exists()


def test_a_failed_build_keeps_the_bundle_that_was_there(data_folder, tmp_path, monkeypatch, capsys):
    """The bundle folder is written as a whole: a full disk while writing the new one leaves the
    old weights and manifest side by side, as they were."""
    import errno

    from helpers import run_cli

    import rtseg.model.bundle
    import rtseg.recipes.distill.build as rb

    class Store:
        m = None

    monkeypatch.setattr(rb, "open_store", lambda *a: Store())
    monkeypatch.setattr(rb, "fit", lambda *a, **k: None)
    monkeypatch.setattr(rb, "bundle_of", lambda *a: None)

    def half_written(bundle, path, half=False):
        (path / "weights.pt").write_text("new weights")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rtseg.model.bundle, "save_bundle", half_written)
    out = tmp_path / "model"
    out.mkdir()
    (out / "weights.pt").write_text("old weights")
    (out / "manifest.json").write_text("old manifest")
    code, _, err = run_cli(["build-model", "--data", data_folder, "--out", out, "--cache", tmp_path / "c"], capsys)
    assert code == 2 and err.strip() == f"error: no space left on device writing {out}"
    assert {p.name: p.read_text() for p in out.iterdir()} == {"weights.pt": "old weights",
                                                               "manifest.json": "old manifest"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary folder left
