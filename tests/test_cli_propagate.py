"""``rtseg features`` / ``rtseg propagate`` on small generated images."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from helpers import run_cli

from rtseg.synthetic import make_dataset

N_SEED, N_UNL = 4, 12  # per class


@pytest.fixture(autouse=True)
def private_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("RTSEG_CACHE_DIR", str(tmp_path / "cache"))


def _write(path, img):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("prop")
    samples = make_dataset(N_SEED + N_UNL, N_SEED + N_UNL, size=(64, 64), seed=3)
    pos, neg = samples[:N_SEED + N_UNL], samples[N_SEED + N_UNL:]
    truth_rows, tile_rows = [], []
    for cls, group in (("polyp", pos), ("non_polyp", neg)):
        for i, s in enumerate(group):
            if i < N_SEED:
                _write(root / "labeled" / cls / f"{cls}{i}.png", s.image)
            else:
                p = root / "unlabeled" / ("sub" if i % 2 else "") / f"{cls}{i}.png"
                _write(p, s.image)
                truth_rows.append((str(p), cls))
                h, w = s.mask.shape
                for t, m in enumerate([s.mask[:h // 2, :w // 2], s.mask[:h // 2, w // 2:],
                                       s.mask[h // 2:, :w // 2], s.mask[h // 2:, w // 2:]]):
                    tile_rows.append((f"{p}#t{t}", "polyp" if m.any() else "non_polyp"))
            (root / "masks").mkdir(exist_ok=True)
            cv2.imwrite(str(root / "masks" / f"{cls}{i}.png"), s.mask.astype(np.uint8) * 255)
    for name, rows in (("truth.csv", truth_rows), ("tile_truth.csv", tile_rows)):
        with open(root / name, "w", newline="") as fh:
            csv.writer(fh).writerows([("path", "label"), *rows])
    return root


def run(argv, capsys):
    return run_cli(argv, capsys)


def read_csv(path):
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


def test_features_csv(data, tmp_path, capsys):
    from rtseg.features import FEATURE_NAMES

    out = tmp_path / "f.csv"
    code, stdout, err = run(["features", data / "labeled", "--out", out], capsys)
    assert code == 0, err
    header, rows = read_csv(out)
    assert header == ["path", *FEATURE_NAMES] and len(header) == 227
    assert len(rows) == 2 * N_SEED and all(len(r) == 227 for r in rows)
    assert np.isfinite(np.array([r[1:] for r in rows], float)).all()


def test_propagate_whole_images_with_truth(data, tmp_path, capsys, monkeypatch):
    out, js = tmp_path / "labels.csv", tmp_path / "r.json"
    argv = ["propagate", "--labeled", data / "labeled", "--unlabeled", data / "unlabeled",
            "--clusters", 6, "--target", 20, "--out", out, "--truth", data / "truth.csv", "--json", js]
    code, stdout, err = run(argv, capsys)
    assert code == 0, err
    header, rows = read_csv(out)
    assert header == ["path", "label", "source", "round"]
    assert len(rows) == 20
    assert {r[1] for r in rows} <= {"polyp", "non_polyp"} and {r[2] for r in rows} <= {"seed", "propagated"}
    seeds = [r for r in rows if r[2] == "seed"]
    assert len(seeds) == 2 * N_SEED and all(r[3] == "0" for r in seeds)
    assert all(int(r[3]) >= 1 for r in rows if r[2] == "propagated")
    assert "target reached" in stdout and "accuracy" in stdout and "precision" in stdout
    rep = json.loads(js.read_text())
    assert rep["labeled"] == 20 and rep["stop_reason"] == "target"
    assert rep["truth"]["n"] == 12 and 0 <= rep["truth"]["accuracy"] <= 1
    assert set(rep["truth"]["classes"]) == {"polyp", "non_polyp"}
    assert (tmp_path / "cache" / "features.npz").is_file()
    # second run: cached features (nothing decoded), same labels
    import rtseg.features as F

    def boom(path):
        raise AssertionError("cache miss")

    monkeypatch.setattr(F, "_features_of_file", boom)
    code, _, err = run(argv, capsys)
    assert code == 0, err
    assert read_csv(out)[1] == rows


def test_propagate_tiles_with_masks(data, tmp_path, capsys):
    out, js = tmp_path / "tiles.csv", tmp_path / "t.json"
    argv = ["propagate", "--labeled", data / "labeled", "--unlabeled", data / "unlabeled",
            "--tiles", "--masks", data / "masks", "--clusters", 16, "--target", 100_000,
            "--out", out, "--truth", data / "tile_truth.csv", "--json", js]
    code, stdout, err = run(argv, capsys)
    assert code == 0, err
    header, rows = read_csv(out)
    assert header == ["path", "label", "source", "round"]
    assert all(r[0][-3:] in ("#t0", "#t1", "#t2", "#t3") for r in rows)
    seeds = {r[0]: r[1] for r in rows if r[2] == "seed"}
    assert len(seeds) == 4 * 2 * N_SEED
    # seed tiles labeled from their masks: non_polyp seeds all non_polyp, some polyp tiles
    assert all(v == "non_polyp" for k, v in seeds.items() if "/non_polyp/" in k)
    assert "polyp" in seeds.values()
    from rtseg.imageio import read_mask
    from rtseg.propagate.files import parse_tile_path, tile_labels_from_mask

    for k, v in seeds.items():
        p, t = parse_tile_path(k)
        want = tile_labels_from_mask(read_mask(data / "masks" / p.name))[t]
        assert v == ("polyp" if want == 1 else "non_polyp")
    rep = json.loads(js.read_text())
    assert rep["tiles"] is True and rep["stop_reason"] in ("exhausted", "stalled")
    assert rep["message"] in stdout.replace("\n", " ") or rep["message"][:30] in stdout
    assert rep["truth"]["n"] == rep["propagated"]
    assert (tmp_path / "cache" / "tile_features.npz").is_file()


def _bad_cases(data, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    half = tmp_path / "half"
    (half / "polyp").mkdir(parents=True)
    _write(half / "polyp" / "a.png", np.zeros((8, 8, 3), np.uint8))
    broken = tmp_path / "broken"
    _write(broken / "polyp" / "a.png", np.full((16, 16, 3), 90, np.uint8))
    (broken / "non_polyp").mkdir()
    (broken / "non_polyp" / "bad.png").write_bytes(b"not an image")
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    base = ["propagate", "--labeled", data / "labeled", "--unlabeled", data / "unlabeled", "--clusters", 4]
    return {
        "missing labeled": (["propagate", "--labeled", tmp_path / "nope", "--unlabeled", data / "unlabeled"],
                            "not found"),
        "missing unlabeled": (["propagate", "--labeled", data / "labeled", "--unlabeled", tmp_path / "nope"],
                              "not found"),
        "empty unlabeled": (["propagate", "--labeled", data / "labeled", "--unlabeled", empty], "no images"),
        "no non_polyp/": (["propagate", "--labeled", half, "--unlabeled", data / "unlabeled"], "non_polyp"),
        "too few seeds": (["propagate", "--labeled", broken, "--unlabeled", data / "unlabeled", "--clusters", 2],
                          "too few seeds"),
        "too many clusters": (base[:-1] + [500], "larger than the number of images"),
        "unwritable out": (base + ["--out", blocker / "x.csv"], "cannot"),
        "bad scale": (base + ["--scale", "minmax"], "--scale"),
        "bad purity": (base + ["--purity", "0.3"], "--purity"),
        "masks without tiles": (base + ["--masks", data / "masks"], "--tiles"),
        "truth matches nothing": (base + ["--out", tmp_path / "o.csv", "--truth", data / "truth_bad.csv"],
                                  "names none"),
    }


CASES = ["missing labeled", "missing unlabeled", "empty unlabeled", "no non_polyp/", "too few seeds",
         "too many clusters", "unwritable out", "bad scale", "bad purity", "masks without tiles",
         "truth matches nothing"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_exit_2_one_line(case, data, tmp_path, capsys):
    (data / "truth_bad.csv").write_text("path,label\nelsewhere/zzz.png,polyp\n")
    argv, needle = _bad_cases(data, tmp_path)[case]
    code, out, err = run(argv, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("warning:")]
    assert code == 2, (out, err)
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert "Traceback" not in err + out
    assert not (tmp_path / "x.csv").exists()


def test_subprocess_error_and_help(tmp_path):
    r = subprocess.run([sys.executable, "-m", "rtseg", "propagate", "--labeled", str(tmp_path / "no"),
                        "--unlabeled", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert r.stderr.startswith("error: labeled folder not found")
    for cmd in ("propagate", "features"):
        h = subprocess.run([sys.executable, "-m", "rtseg", cmd, "--help"], capture_output=True,
                           text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
        assert h.returncode == 0 and "Example" in h.stdout, h.stderr


def test_features_bad_input(tmp_path, capsys):
    code, _, err = run(["features", tmp_path / "nope", "--out", tmp_path / "f.csv"], capsys)
    assert code == 2 and err.startswith("error: ") and err.strip().count("\n") == 0
    assert not (tmp_path / "f.csv").exists()


def test_cli_defaults_match_module():
    import inspect

    from rtseg.propagate import files as PF, kmeans as P
    from rtseg.cli.propagation import propagate as cmd

    d = {k: v.default.default for k, v in inspect.signature(cmd).parameters.items()}
    assert (d["clusters"], d["target"], d["scale"], d["purity"]) == (
        P.DEFAULT_CLUSTERS, P.DEFAULT_TARGET, P.DEFAULT_SCALE, P.DEFAULT_PURITY)
