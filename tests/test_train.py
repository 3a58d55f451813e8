"""rtseg train: data pipeline, training, determinism, resume, bundle, bad input.

Small and fast: 16 + 16 generated 64 x 64 images, batch 8, one or two epochs, one torch
thread (two threads on two shared cores can be several times slower than one).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from rtseg.cli import main
from rtseg.train.data import (AugmentConfig, augment_batch, crop_tile, load_images, parse_tile_path,
                        read_labels_csv, split_tiles, stratified_split)
from rtseg.errors import UserError
from rtseg.model.bundle import load_bundle
from rtseg.synthetic import make_dataset
from rtseg.train.checkpoint import load_init_state
from rtseg.train.config import CHECKPOINT, TrainConfig
from rtseg.train.loop import train

SIZE = 64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def write_png(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def write_csv(path: Path, rows, header=("path", "label", "source", "round")) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """16 polyp + 16 non-polyp 64 x 64 PNGs in images/, labels.csv beside them."""
    root = tmp_path_factory.mktemp("train_data")
    rows = []
    for i, s in enumerate(make_dataset(16, 16, size=(SIZE, SIZE), seed=3)):
        write_png(root / "images" / f"{i:02d}.png", s.image)
        rows.append([f"images/{i:02d}.png", s.label, "kvasir" if s.label == "polyp" else "hk", "0"])
    return write_csv(root / "labels.csv", rows)


def config(dataset: Path, out: Path, **kw) -> TrainConfig:
    base = dict(labels=dataset, out=out, epochs=2, batch=8, size=SIZE, val=8, lr=1e-4,
                device="cpu", augment=False, seed=0, workers=2)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "model"
    return train(config(dataset, out), progress=False)


def weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# --- training ------------------------------------------------------------------------------
def test_training_lowers_loss_and_writes_bundle(trained, dataset):
    h = trained.history
    assert [r["epoch"] for r in h] == [1, 2]
    assert h[1]["train_loss"] < h[0]["train_loss"]
    assert all(np.isfinite(r["train_loss"]) for r in h)

    bundle = load_bundle(trained.bundle)
    m = bundle.manifest
    assert (m.arch, m.input_size, m.fov_mask, m.cam_layer) == ("efficientnet-b1", SIZE, True, 14)
    assert m.mean == pytest.approx((0.485, 0.456, 0.406))
    assert m.std == pytest.approx((0.229, 0.224, 0.225))
    assert str(m.threshold) == "above 0.28"
    assert m.class_names == ("non_polyp", "polyp")
    t = m.training
    assert t["labels"] == str(dataset.resolve())
    assert t["classes"] == {"non_polyp": 16, "polyp": 16}
    assert t["sources"] == {"kvasir": {"non_polyp": 0, "polyp": 16},
                            "hk": {"non_polyp": 16, "polyp": 0}}
    assert (t["train_images"], t["val_images"]) == (24, 8)
    assert (t["epochs"], t["seed"], t["augment"], t["device"]) == (2, 0, False, "cpu")
    assert t["seconds"] > 0
    mt = m.metrics
    assert mt["best_epoch"] == trained.best_epoch in (1, 2)
    assert len(mt["history"]) == 2
    best = mt["history"][mt["best_epoch"] - 1]
    assert mt["val_accuracy"] == best["val_accuracy"] and mt["val_loss"] == best["val_loss"]
    # the bundle holds the best epoch's weights; the checkpoint the last epoch's
    ck = torch.load(trained.checkpoint, map_location="cpu", weights_only=True)
    assert ck["epoch"] == 2 and ck["best"]["epoch"] == mt["best_epoch"]
    assert_same(weights(trained.bundle / "weights.pt"), ck["best"]["state"])
    # the bundle's model runs on the manifest's preprocessing
    from rtseg.model.preprocess import images_to_input

    x = images_to_input([np.zeros((40, 50, 3), np.uint8)], m)
    assert bundle.model(x).shape == (1, 1)


def test_same_seed_gives_identical_weights(trained, dataset, tmp_path):
    again = train(config(dataset, tmp_path / "again"), progress=False)
    assert_same(weights(trained.checkpoint)["model"], weights(again.checkpoint)["model"])
    assert_same(weights(trained.bundle / "weights.pt"), weights(again.bundle / "weights.pt"))
    assert [r["train_loss"] for r in again.history] == [r["train_loss"] for r in trained.history]


def test_resume_continues_the_epoch_count(trained, dataset, tmp_path):
    out = tmp_path / "resumed"
    first = train(config(dataset, out, epochs=1), progress=False)
    assert first.epochs_run == 1 and len(first.history) == 1
    second = train(config(dataset, out, epochs=2, resume=True), progress=False)
    assert second.epochs_run == 1
    assert [r["epoch"] for r in second.history] == [1, 2]
    assert weights(out / CHECKPOINT)["epoch"] == 2
    assert load_bundle(out).manifest.training["resumed"] is True
    # 1 + 1 resumed epochs == 2 epochs in one go, bit for bit (CPU)
    assert_same(weights(out / CHECKPOINT)["model"], weights(trained.checkpoint)["model"])
    # resuming a finished run only writes the bundle
    third = train(config(dataset, out, epochs=2, resume=True), progress=False)
    assert third.epochs_run == 0 and third.best_epoch == second.best_epoch


def test_cli_trains_on_tiles_with_augmentation(tmp_path, capsys):
    rows = []
    for i, s in enumerate(make_dataset(3, 3, size=(2 * SIZE, 2 * SIZE), seed=5)):
        write_png(tmp_path / "im" / f"{i}.png", s.image)
        rows += [[f"im/{i}.png#t{t}", s.label] for t in range(2)]  # two tiles each
    labels = write_csv(tmp_path / "labels.csv", rows, header=("path", "label"))
    out = tmp_path / "tiles_model"
    with pytest.raises(SystemExit) as e:
        main(["train", "--labels", str(labels), "--out", str(out), "--epochs", "1", "--batch",
              "4", "--size", "32", "--val", "2", "--device", "cpu", "--layer", "head",
              "--threshold", "band 0.4 0.7", "--no-fov", "--workers", "1"])
    cap = capsys.readouterr()
    assert e.value.code == 0, cap.err
    assert cap.out.startswith(f"saved {out}")
    assert "epoch   1/1" in cap.err
    m = json.loads((out / "manifest.json").read_text())
    assert (m["input_size"], m["cam_layer"], m["fov_mask"]) == (32, "head", False)
    assert m["threshold"] == {"kind": "band", "lo": 0.4, "hi": 0.7}
    assert m["training"]["tiles"] == 12 and m["training"]["augment"] is True
    assert m["training"]["sources"] == {"unspecified": {"non_polyp": 6, "polyp": 6}}


# --- data ----------------------------------------------------------------------------------
@pytest.mark.parametrize("precise", [1000, 0])
def test_precise_bn_re_estimates_the_statistics(dataset, tmp_path, precise):
    """With --precise-bn the saved BN statistics are those of the training images under the
    final weights (stem BN: the mean of the stem convolution's output over all 24 training
    images, 3 equal batches); without it they lag far behind (momentum 0.01)."""
    from rtseg.model.preprocess import images_to_input

    res = train(config(dataset, tmp_path / "m", epochs=1, val=8, precise_bn=precise),
                progress=False)
    b = load_bundle(res.bundle)
    items = read_labels_csv(dataset)
    train_idx, _ = stratified_split(np.array([it.target for it in items]), 8, 0)
    images = [cv2.cvtColor(cv2.imread(str(items[i].path)), cv2.COLOR_BGR2RGB) for i in train_idx]
    with torch.no_grad():
        stem = b.model._conv_stem(images_to_input(images, b.manifest))
    expected = stem.mean(dim=(0, 2, 3))
    got = b.model._bn0.running_mean
    assert b.manifest.training["precise_bn"] == (24 if precise else 0)
    if precise:
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    else:
        assert (got - expected).abs().max() > 10 * 1e-5 + 1e-4 * expected.abs().max()


def test_parse_tile_path():
    assert parse_tile_path("a/b.jpg#t2") == (Path("a/b.jpg"), 2)
    assert parse_tile_path("a/b.jpg") == (Path("a/b.jpg"), None)
    assert parse_tile_path("a/odd#1.jpg") == (Path("a/odd#1.jpg"), None)
    with pytest.raises(UserError):
        parse_tile_path("a/b.jpg#t4")


def test_tiles_load_the_right_quarter(tmp_path):
    h, w = 40, 60
    img = np.zeros((h, w, 3), np.uint8)
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]
    img[:20, :30], img[:20, 30:], img[20:, :30], img[20:, 30:] = colours
    write_png(tmp_path / "sub" / "quad.png", img)
    assert [tuple(t[0, 0]) for t in split_tiles(img)] == colours
    assert crop_tile(img, 3).shape == (20, 30, 3) and crop_tile(img, None) is img
    order = [2, 0, 3, 1]
    labels = write_csv(tmp_path / "labels.csv",
                       [[f"sub/quad.png#t{t}", "polyp"] for t in order]
                       + [["sub/quad.png", "non_polyp"]],
                       header=("path", "label"))
    items = read_labels_csv(labels)
    assert [it.tile for it in items] == order + [None]
    assert items[0].path == tmp_path / "sub" / "quad.png"
    cache = load_images(items, 16, workers=2)
    assert cache.shape == (5, 16, 16, 3) and cache.dtype == torch.uint8
    for k, t in enumerate(order):
        assert (cache[k] == torch.tensor(colours[t], dtype=torch.uint8)).all(), t


def test_stratified_split_is_seeded_and_keeps_both_classes():
    labels = [0] * 30 + [1] * 10
    tr, va = stratified_split(labels, 8, seed=1)
    assert len(va) == 8 and len(tr) == 32 and not set(tr) & set(va)
    assert sum(labels[i] for i in va) == 2  # 10/40 of 8
    assert np.array_equal(va, stratified_split(labels, 8, seed=1)[1])
    assert not np.array_equal(va, stratified_split(labels, 8, seed=2)[1])
    small = [0] * 9 + [1] * 2
    tr, va = stratified_split(small, 9, seed=0)  # at most n - number of classes
    assert sorted({small[i] for i in tr}) == [0, 1] and sorted({small[i] for i in va}) == [0, 1]
    with pytest.raises(UserError, match="too large"):
        stratified_split([0] * 9 + [1] * 2, 10, seed=0)


def test_augment_is_seeded_and_flip_only_is_exact():
    frames = torch.randint(0, 256, (6, 24, 24, 3), dtype=torch.uint8)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    a, b = augment_batch(frames, g1), augment_batch(frames, g2)
    assert a.shape == frames.shape and a.dtype == torch.float32
    assert torch.equal(a, b) and 0 <= a.min() and a.max() <= 255
    assert not torch.equal(a, augment_batch(frames, g1))
    flip_only = AugmentConfig(rot90=False, max_angle=0, zoom=(1, 1), shift=0, brightness=0,
                              contrast=0, saturation=0, hue=0)
    out = augment_batch(frames, torch.Generator().manual_seed(0), flip_only)
    f = frames.float()
    for i in range(len(frames)):
        cands = [f[i], f[i].flip(1), f[i].flip(0), f[i].flip(0).flip(1)]
        assert min((out[i] - c).abs().max().item() for c in cands) < 1e-2


def test_init_loads_imagenet_body_and_drops_fc(tmp_path):
    from efficientnet_pytorch import EfficientNet

    from rtseg.model.bundle import build_model

    torch.manual_seed(1)
    imagenet = EfficientNet.from_name("efficientnet-b1")  # 1000-class head
    torch.save(imagenet.state_dict(), tmp_path / "b1.pth")
    model = build_model("efficientnet-b1")
    fc_before = model._fc.weight.clone()
    n = load_init_state(tmp_path / "b1.pth", model)
    assert n == len(model.state_dict()) - 2
    assert torch.equal(model._conv_stem.weight, imagenet._conv_stem.weight)
    assert torch.equal(model._fc.weight, fc_before)


# --- bad input: exit 2, one line -----------------------------------------------------------
def _cli_error(args, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(["train", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize("case, expect", [
    ("missing_csv", "labels CSV not found"),
    ("missing_columns", "lacks column(s) path, label"),
    ("unknown_paths", "2 image(s) not found"),
    ("unknown_label", "unknown label(s) 'tumour'"),
    ("one_class", "no 'non_polyp' images"),
    ("val_too_large", "--val 40 is too large"),
    ("unwritable_out", "cannot create folder"),
    ("resume_without_checkpoint", "--resume: no checkpoint"),
    ("missing_init", "--init checkpoint not found"),
    ("corrupt_init", "corrupt --init checkpoint"),
    ("bad_tile", "bad path(s) 'images/00.png#t9'"),
    ("unreadable_image", "cannot be read"),
])
def test_bad_input_exits_2_with_one_line(case, expect, dataset, tmp_path, capsys):
    out = tmp_path / "out"
    labels = dataset
    extra: list[str] = []
    good = [[r[0], r[1]] for r in csv.reader(open(dataset))][1:]
    if case == "missing_csv":
        labels = tmp_path / "nope.csv"
    elif case == "missing_columns":
        labels = write_csv(tmp_path / "l.csv", good, header=("file", "class"))
    elif case == "unknown_paths":
        labels = write_csv(dataset.parent / "l_paths.csv", good + [["gone/a.png", "polyp"],
                                                                    ["gone/b.png", "polyp"]],
                           header=("path", "label"))
    elif case == "unknown_label":
        labels = write_csv(dataset.parent / "l_label.csv", good + [[good[0][0], "tumour"]],
                           header=("path", "label"))
    elif case == "one_class":
        labels = write_csv(dataset.parent / "l_one.csv", [r for r in good if r[1] == "polyp"],
                           header=("path", "label"))
    elif case == "val_too_large":
        extra = ["--val", "40"]
    elif case == "unwritable_out":
        (tmp_path / "file.txt").write_text("x")
        out = tmp_path / "file.txt" / "model"
    elif case == "resume_without_checkpoint":
        extra = ["--resume"]
    elif case == "missing_init":
        extra = ["--init", str(tmp_path / "none.pth")]
    elif case == "corrupt_init":
        (tmp_path / "bad.pth").write_bytes(b"\x00not a checkpoint" * 10)
        extra = ["--init", str(tmp_path / "bad.pth")]
    elif case == "bad_tile":
        labels = write_csv(dataset.parent / "l_tile.csv", good + [["images/00.png#t9", "polyp"]],
                           header=("path", "label"))
    elif case == "unreadable_image":
        (dataset.parent / "broken.png").write_bytes(b"not a png")
        labels = write_csv(dataset.parent / "l_broken.csv", good + [["broken.png", "polyp"]],
                           header=("path", "label"))
    msg = _cli_error(["--labels", str(labels), "--out", str(out), "--device", "cpu",
                      "--epochs", "1", "--size", "32", "--val", "8", *extra], capsys)
    assert expect in msg, msg
