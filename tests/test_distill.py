"""The frozen-backbone recipe on a generated data folder: folds cannot leak, a bundle comes out."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from rtseg.synthetic import make_sample


@pytest.fixture(scope="module")
def data_folder(tmp_path_factory):
    """The data README's layout, generated: Kvasir-SEG, CVC (3 sequences), PolypGen, crops."""
    from helpers import make_data_folder

    return make_data_folder(tmp_path_factory.mktemp("data"))


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


def test_cross_validation_and_build_on_generated_data(data_folder, tmp_path, monkeypatch):
    import rtseg.recipes.distill.build as rb
    import rtseg.recipes.distill.cv as rcv
    import rtseg.recipes.distill.data as rd
    import rtseg.recipes.distill.fit as rlf
    from rtseg.model.bundle import load_bundle
    from rtseg.runtime import create_segmenter

    import rtseg.recipes.distill.data as rld

    monkeypatch.setattr(rld, "SEEDS", {"kvasir": 3, "cvc": 2})  # the one place the seed counts live
    monkeypatch.setattr(rlf, "VARIANTS", {"default": rlf.Variant(epochs=2),
                                         "agree": rlf.Variant("agree", agree=True, epochs=2),
                                         "agree-allneg": rlf.Variant("agree-allneg", agree=True,
                                                                     head_all_pg_neg=True, epochs=2),
                                         "agree-allneg-video": rlf.Variant("agree-allneg-video", agree=True,
                                                                           head_all_pg_neg=True, epochs=2,
                                                                           call_smoothing=True),
                                         "cam-only": rlf.Variant("cam-only", head=False, selftrain=False),
                                         rlf.DEFAULT_VARIANT: rlf.Variant(rlf.DEFAULT_VARIANT, agree=True,
                                                                          head_all_pg_neg=True, epochs=2,
                                                                          call_smoothing=True, bkai=True,
                                                                          finetune_steps=2)})
    res = rcv.cross_validate(data_folder, 2, ["default", "cam-only"], tmp_path / "cache")
    for name in ("default", "cam-only"):
        assert len(res["per_fold"][name]) == 2
        fold = res["per_fold"][name][0]
        for src in ("kvasir", "cvc"):
            assert set(fold[src]) >= {"model", "ellipse", "all_foreground", "n", "called_polyp"}
            assert 0.0 <= fold[src]["model"]["dice"] <= 1.0
        assert 0.0 <= fold["pg_neg"]["called_non_polyp"] <= 1.0
        assert fold["tune"]["threshold"] in rlf.THRESHOLDS
    # every polyp-free sequence is held out once, and the all-frames rate is their weighted mean
    s = res["summary"]["default"]
    pg = rd.load_all(data_folder)["pg_neg"]
    per = s["pg_neg_called_non_polyp_per_sequence"]
    assert set(per) == {it.group for it in pg}
    n = {g: sum(it.group == g for it in pg) for g in per}
    assert abs(s["pg_neg_called_non_polyp_all_frames"] - sum(per[g] * n[g] for g in per) / len(pg)) < 1e-3
    assert 0.0 <= s["polyp_called_polyp_all_frames"] <= 1.0
    # the feature cache is reused: a new store reads it instead of decoding images again
    store = rld.FeatureStore(None, rld.manifest(), tmp_path / "cache")
    keys = [str(it.image) for it in rd.load_all(data_folder)["kvasir"]]
    store.add(keys, lambda k: (_ for _ in ()).throw(AssertionError("decoded again")), "kvasir")
    assert store.get(keys[:2]).gap.shape == (2, 1280)
    out = rb.build(data_folder, tmp_path / "bundle", tmp_path / "cache")
    b = load_bundle(out)
    assert b.manifest.arch == "efficientnet-lite1" and b.manifest.active_area and b.manifest.head
    assert b.manifest.head["agree"] is True  # the shipped variant
    assert b.manifest.training["variant"]["head_all_pg_neg"] is True
    assert b.manifest.call_smoothing in rlf.CALL_FACTORS  # chosen by the inner CV
    seg = create_segmenter(out, backend="torch-eager", device="cpu")
    o = seg(cv2.imread(str(data_folder / "polypgen/positive/A_positive0.jpg"))[None])
    assert o.boxes[0].x0 >= 30 and o.mask.shape == (1, 224, 224)


def test_operating_point_is_chosen_inside_the_training_folds_and_travels_into_the_bundle(
        data_folder, tmp_path, monkeypatch):
    import rtseg.recipes.distill.build as rb
    import rtseg.recipes.distill.fit as rlf
    from rtseg.imageio import read_image
    from rtseg.model.bundle import load_bundle
    from rtseg.runtime import create_segmenter

    import rtseg.recipes.distill.data as rld

    monkeypatch.setattr(rld, "SEEDS", {"kvasir": 3, "cvc": 2})  # the one place the seed counts live
    v = rlf.Variant("agree-allneg-op", agree=True, head_all_pg_neg=True, inner_op=True, epochs=2,
                    selftrain=False)
    monkeypatch.setattr(rlf, "VARIANTS", {"agree-allneg-op": v})
    # the inner CV sees only the training selection handed to it: a fold of the outer split
    items, store, train, held, seen = spied_fold(data_folder, tmp_path, monkeypatch)
    real_get = store.get.__wrapped__
    t, h, info = rlf.choose_operating_point(store, train, v, store.m, log=lambda *a: None)
    assert t in rlf.OP_SHIFTS and h in rlf.OP_AGREE
    assert 0.0 <= info["polyp_called_polyp"] <= 1.0 and 0.0 <= info["pg_neg_called_non_polyp"] <= 1.0
    assert seen and not (set(seen) & held)  # no held-out image was looked at
    monkeypatch.setattr(store, "get", real_get)

    # build: the chosen point goes into the bundle (fc bias shifted, head's agree_at), and the
    # bundle's frame probability is the recipe's
    monkeypatch.setattr(rlf, "choose_operating_point", lambda *a, **k: (1.5, 0.7, {"stub": 1}))
    fits = []
    monkeypatch.setattr(rb, "fit", lambda *a, **k: fits.append(rlf.fit(*a, **k)) or fits[-1])
    out = rb.build(data_folder, tmp_path / "bundle", tmp_path / "cache", "agree-allneg-op")
    f = fits[-1]
    assert (f.shift, f.agree_at) == (1.5, 0.7)
    b = load_bundle(out)
    assert b.manifest.head["agree_at"] == 0.7 and b.manifest.training["shift"] == 1.5
    assert abs(float(b.model._fc.bias.detach()) - (f.b - 1.5)) < 1e-2  # fp16 weights
    seg = create_segmenter(out, backend="torch-eager", device="cpu")
    frames = [read_image(it.image) for it in items["kvasir"][:4]]
    c = store.get([str(it.image) for it in items["kvasir"][:4]])
    prob, _ = rlf.maps_of(f, c, rlf.SIZE, False, True)
    got = np.concatenate([seg(np.ascontiguousarray(fr[None, ..., ::-1])).prob for fr in frames])
    assert np.abs(got - prob).max() < 2e-2, (got, prob)
    assert np.array_equal(got > 0.5, prob > 0.5)


def test_closeup_views_zoom_into_the_active_area():
    from rtseg.model.active_area import prepare
    from rtseg.recipes.distill.data import CLOSEUPS, closeup_views

    rng = np.random.default_rng(3)
    frame = np.zeros((180, 320, 3), np.uint8)  # 16:9 with black margins, as PolypGen
    frame[:, 70:250] = make_sample(rng, (180, 180), polyp=False).image
    view, box = prepare(frame, True)
    views = closeup_views(frame)
    h, w = view.shape[:2]
    assert len(views) == CLOSEUPS and box.x0 >= 60
    # the centre half first (2x zoom), then the four quadrants, all cut from the active area
    assert np.array_equal(views[0], view[h // 4:h // 4 + h // 2, w // 4:w // 4 + w // 2])
    assert np.array_equal(views[4], view[h // 2:, w // 2:])
    assert all(abs(v.shape[0] - h / 2) <= 1 and abs(v.shape[1] - w / 2) <= 1 for v in views)


def test_closeup_negatives_come_from_training_frames_only(data_folder, tmp_path, monkeypatch):
    import rtseg.recipes.distill.data as rld
    import rtseg.recipes.distill.fit as rlf

    monkeypatch.setattr(rld, "SEEDS", {"kvasir": 3, "cvc": 2})
    _, store, train, held, seen = spied_fold(data_folder, tmp_path, monkeypatch)
    v = rlf.Variant("zoom", agree=True, head_all_pg_neg=True, closeups=5, epochs=2, selftrain=False)
    f = rlf.fit(store, train, v, store.m, log=lambda *a: None)
    zooms = [k for k in seen if "#z" in k]
    assert f.tune["n_closeups"] == 5 * len(train["pg_neg"]) > 0
    assert {k.rsplit("#z", 1)[0] for k in zooms} == {str(it.image) for it in train["pg_neg"]}
    assert not ({k.split("#")[0] for k in seen} & held)  # no held-out frame, nor a view of one
    # one close-up per polyp-free frame with closeups=1: the centre only
    _, _, _, z1 = rlf.negatives(store, train, rlf.Variant(closeups=1), [])
    assert z1 and all(k.endswith("#z0") for k in z1)


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
    prob, maps = rlf.maps_of(f, c, rlf.SIZE, True, True)
    seg = create_segmenter(out, backend="torch-eager", device="cpu")
    got = [seg(np.ascontiguousarray(read_image(it.image)[None, ..., ::-1])) for it in its]
    p = np.concatenate([o.prob for o in got])
    assert np.abs(p - prob).max() < 3e-2, (p, prob)
    assert np.array_equal(p > 0.5, prob > 0.5)
    cam = np.concatenate([o.cam for o in got])
    assert cam.shape == maps.shape and np.abs(cam - maps).mean() < 2e-2


def test_fine_tuned_top_travels_into_the_bundle(data_folder, tmp_path, monkeypatch):
    """Variant top_epochs: the bundle's network (ImageNet backbone with the fine-tuned top
    installed) computes the frame probabilities and maps the recipe scored from cached features."""
    import rtseg.recipes.distill.build as rb
    import rtseg.recipes.distill.data as rd
    import rtseg.recipes.distill.data as rld
    import rtseg.recipes.distill.fit as rlf
    from rtseg.model.bundle import build_model, load_bundle

    monkeypatch.setattr(rld, "SEEDS", {"kvasir": 3, "cvc": 2})
    v = rlf.Variant("top", agree=True, head_all_pg_neg=True, top_epochs=2, epochs=2, selftrain=False)
    monkeypatch.setattr(rlf, "VARIANTS", {"top": v})
    fits = []
    monkeypatch.setattr(rb, "fit", lambda *a, **k: fits.append(rlf.fit(*a, **k)) or fits[-1])
    out = rb.build(data_folder, tmp_path / "bundle", tmp_path / "cache", "top")
    f = fits[-1]
    assert f.top is not None and len(f.top.blocks) == 6
    b = load_bundle(out)
    assert "blocks 15-20" in b.manifest.training["backbone"]
    imagenet = build_model(rd.ARCH, pretrained=True)

    def w(module):
        return module.weight.detach().float().numpy()

    assert not np.array_equal(w(f.top.conv_head), w(imagenet._conv_head))  # the top was trained
    assert np.allclose(w(b.model._conv_head), w(f.top.conv_head), atol=1e-3)  # and installed
    assert np.allclose(w(b.model._blocks[20]._project_conv), w(f.top.blocks[5]._project_conv), atol=1e-3)
    assert np.allclose(w(b.model._blocks[14]._project_conv), w(imagenet._blocks[14]._project_conv),
                       atol=1e-3)  # the frozen part stays ImageNet's
    assert_bundle_is_the_fit(f, out, data_folder, tmp_path)


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

    import rtseg.recipes.distill.data as rld

    monkeypatch.setattr(rld, "SEEDS", {"kvasir": 3, "cvc": 2})
    v = rlf.Variant("video", agree=True, head_all_pg_neg=True, call_smoothing=True, epochs=2, selftrain=False)
    monkeypatch.setattr(rlf, "VARIANTS", {"video": v})
    items, store, train, held, seen = spied_fold(data_folder, tmp_path, monkeypatch)
    a, info = rlf.choose_call_smoothing(store, train, v, store.m, log=lambda *_: None)
    assert a in rlt.CALL_FACTORS and set(info["table"]) == {str(x) for x in rlt.CALL_FACTORS}
    assert seen and not (set(seen) & held)  # no held-out image was looked at
    # the held-out fold scored as the loop shows it: sequences in frame order through CallSmoother
    store.get = store.get.__wrapped__
    f = rlf.fit(store, train, v, store.m, log=lambda *_: None, tune=False)
    test = {s: [it for it in its if str(it.image) in held] for s, its in items.items()}
    f.call_smoothing = 0.0
    sc0 = rcv.score(store, f, test, v)
    assert sc0["cvc"]["stream"] == sc0["cvc"]["model"]  # a = 0: every frame alone
    assert sc0["pg_neg"]["stream_called_non_polyp"] == sc0["pg_neg"]["called_non_polyp"]
    f.call_smoothing = 0.8
    sc = rcv.score(store, f, test, v)
    ok = []
    for clip in rlt.clips(test["pg_neg"]):
        prob, _ = rlf.maps_of(f, store.get([str(it.image) for it in clip]), rlf.SIZE, False, True)
        ok += list(CallSmoother(0.8)(prob) <= 0.5)
    assert sc["pg_neg"]["stream_called_non_polyp"] == round(float(np.mean(ok)), 4)
    assert sc["kvasir"]["stream"] == sc["kvasir"]["model"]  # single images are left as they are
    # build: the chosen factor goes into the bundle's manifest, which the runtime reads
    monkeypatch.setattr(rlf, "choose_call_smoothing", lambda *a_, **k: (0.7, {"stub": 1}))
    out = rb.build(data_folder, tmp_path / "bundle", tmp_path / "cache", "video")
    assert load_bundle(out).manifest.call_smoothing == 0.7
    assert create_segmenter(out, backend="torch-eager", device="cpu").manifest.call_smoothing == 0.7


def test_end_to_end_fine_tuned_network_travels_into_the_bundle(data_folder, tmp_path, monkeypatch):
    """Variant finetune_steps: blocks 7-20, classifier and head trained through augmented views;
    the bundle computes the probabilities and maps the recipe scored from cached block-6 features."""
    import rtseg.recipes.distill.build as rb
    import rtseg.recipes.distill.data as rd
    import rtseg.recipes.distill.data as rld
    import rtseg.recipes.distill.fit as rlf
    from rtseg.model.bundle import build_model, load_bundle

    monkeypatch.setattr(rld, "SEEDS", {"kvasir": 3, "cvc": 2})
    v = rlf.Variant("ft", agree=True, head_all_pg_neg=True, finetune_steps=3, epochs=2, selftrain=False)
    monkeypatch.setattr(rlf, "VARIANTS", {"ft": v})
    fits = []
    monkeypatch.setattr(rb, "fit", lambda *a, **k: fits.append(rlf.fit(*a, **k)) or fits[-1])
    out = rb.build(data_folder, tmp_path / "bundle", tmp_path / "cache", "ft")
    f = fits[-1]
    assert f.top is not None and f.top.from_block == 6 and len(f.top.blocks) == 14
    b = load_bundle(out)
    assert "blocks 7-20" in b.manifest.training["backbone"] and "end to end" in b.manifest.training["backbone"]
    imagenet = build_model(rd.ARCH, pretrained=True)

    def w(module):
        return module.weight.detach().float().numpy()

    assert not np.allclose(w(f.top.blocks[7]._project_conv), w(imagenet._blocks[14]._project_conv))  # trained
    assert np.allclose(w(b.model._blocks[14]._project_conv), w(f.top.blocks[7]._project_conv), atol=1e-3)
    assert np.allclose(w(b.model._blocks[6]._project_conv), w(imagenet._blocks[6]._project_conv), atol=1e-3)
    assert_bundle_is_the_fit(f, out, data_folder, tmp_path)
