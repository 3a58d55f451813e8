"""File modes, bad manifests, output paths checked up front, and a new user's rough edges."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys

import cv2
import numpy as np
import pytest
from helpers import run_cli

from rtseg.atomic import write_json, write_text
from rtseg.live.capture import classify_source, open_source
from rtseg.errors import UserError, brief
from rtseg.model.bundle import Bundle, load_bundle, save_bundle
from rtseg.model.manifest import Manifest
from rtseg.runtime.base import Segmenter, SegOutput
from rtseg.live.loop import StreamConfig, run_stream
from rtseg.synthetic import make_dataset, write_video
from rtseg.model.thresholds import ThresholdPolicy
from rtseg.model.validate import validate_manifest_dict

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture()
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    p = tmp_path_factory.mktemp("vid") / "clip.mp4"
    write_video(p, n=12, size=(64, 96))
    return p


@pytest.fixture()
def images(tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    for i, s in enumerate(make_dataset(2, 1, size=(64, 64), seed=2)):
        cv2.imwrite(str(d / f"{i}.png"), s.image[..., ::-1])
    return d


# --- 2. file modes -------------------------------------------------------------------------
def test_atomic_writes_honour_the_umask_and_keep_a_replaced_mode(tmp_path):
    old = os.umask(0o002)
    try:
        write_text(tmp_path / "a.txt", "x")
        assert mode(tmp_path / "a.txt") == 0o664
        os.umask(0o022)
        write_json(tmp_path / "b.json", {})
        assert mode(tmp_path / "b.json") == 0o644
        os.chmod(tmp_path / "a.txt", 0o640)
        write_text(tmp_path / "a.txt", "y")  # replacing keeps the file's own mode
        assert mode(tmp_path / "a.txt") == 0o640 and (tmp_path / "a.txt").read_text() == "y"
    finally:
        os.umask(old)


def _all_files(folder):
    return [p for p in folder.rglob("*") if p.is_file()]


class PlainSeg(Segmenter):
    name = "fake"
    device = "cpu"

    def __init__(self) -> None:
        self.manifest = Manifest(input_size=16, threshold=ThresholdPolicy("above", 0.5))

    def __call__(self, frames):
        cam = np.stack([cv2.resize(f[..., 1], (16, 16)).astype(np.float32) / 255 for f in frames])
        return SegOutput(cam.mean(axis=(1, 2)), cam, (cam > 0.5).astype(np.uint8))


def test_every_output_is_644_under_umask_022(umask022, bundle_dir, calibrated_bundle, images,
                                             video, tmp_path, capsys):
    preds = tmp_path / "preds"
    code, _, err = run_cli(["predict", "--model", bundle_dir, "--images", images, "--out", preds,
                            "--heatmaps", "--device", "cpu"], capsys)
    assert code == 0, err
    run_stream(StreamConfig(source=str(video), headless=True, quiet=True,
                            save=str(tmp_path / "v" / "out.mp4"), json=str(tmp_path / "v" / "s.json")),
                            segmenter=PlainSeg())
    save_bundle(Bundle(calibrated_bundle.model, calibrated_bundle.manifest), tmp_path / "bundle")
    files = _all_files(preds) + _all_files(tmp_path / "v") + _all_files(tmp_path / "bundle")
    assert len(files) >= 3 + 3 + 1 + 2 + 2
    assert {f.name: oct(mode(f)) for f in files} == {f.name: oct(0o644) for f in files}


def test_export_table_keeps_whole_names_at_80_columns(umask022, bundle_dir, tmp_path, capsys,
                                                     monkeypatch):
    import rtseg.graph.onnx as E
    from rtseg.atomic import write_bytes

    def fake_export(bundle, path, layer=None, fp16=False, **k):  # the table, not the export
        write_bytes(path, b"onnx" * 1000)
        f = E.ExportedFile(path, "onnx-fp16" if fp16 else "onnx")
        f.checks = ["onnx.checker", "ORT vs eager 90x70: cam 1.0e-06, prob 1.0e-07"]
        return f

    monkeypatch.setattr(E, "export_onnx", fake_export)
    monkeypatch.setenv("COLUMNS", "80")
    out_dir = tmp_path / "exp"
    code, out, err = run_cli(["export", "--model", bundle_dir, "--out", out_dir, "--fp16",
                              "--layer", "14", "--frame-size", "90x70"], capsys)
    assert code == 0, err
    assert "calib64.onnx " in out and "calib64.fp16.onnx " in out and "…" not in out
    assert {oct(mode(p)) for p in out_dir.iterdir()} == {oct(0o644)}


# --- 3. bad manifests ------------------------------------------------------------------------
BAD = [("input_size", "224px"), ("input_size", [224]), ("input_size", 0), ("input_size", -5),
       ("input_size", True), ("mean", [0.5, 0.5]), ("std", [0.2, 0.2, 0.0]),
       ("mean", "0.5"), ("class_names", ["polyp"]), ("fov_mask", "yes"),
       ("postprocess", "largest"), ("cam_layer", [3]), ("threshold", 0.5), ("arch", 1)]


def test_validate_manifest_dict_names_the_field_and_the_file(bundle_dir):
    good = json.loads((bundle_dir / "manifest.json").read_text())
    validate_manifest_dict({**good, "head": {"kind": "x"}, "active_area": True,
                            "arch": "efficientnet-lite1"}, "m.json")  # unknown fields pass
    for key, value in BAD:
        with pytest.raises(UserError) as ei:
            validate_manifest_dict({**good, key: value}, "/x/manifest.json")
        msg = str(ei.value)
        assert f"'{key}'" in msg and "/x/manifest.json" in msg and "\n" not in msg


@pytest.fixture()
def bad_bundle(bundle_dir, tmp_path):
    def make(key, value):
        d = tmp_path / f"bad_{key}"
        if d.exists():
            shutil.rmtree(d)
        shutil.copytree(bundle_dir, d)
        m = json.loads((d / "manifest.json").read_text())
        m[key] = value
        (d / "manifest.json").write_text(json.dumps(m))
        return d
    return make


@pytest.mark.parametrize("key,value", [("input_size", "224px"), ("input_size", [224]),
                                       ("input_size", 0), ("input_size", -5),
                                       ("mean", [0.4, 0.4]), ("std", [0.2, 0.2, 0.2, 0.2])])
def test_bad_manifest_is_one_error_line_in_every_command(key, value, bad_bundle, images, video,
                                                         tmp_path, capsys):
    b = bad_bundle(key, value)
    out = tmp_path / "never"
    commands = [
        ["predict", "--model", b, "--images", images, "--out", out, "--device", "cpu"],
        ["eval", "--model", b, "--images", images, "--masks", images, "--device", "cpu"],
        ["stream", "--model", b, "--source", video, "--headless", "--backend", "torch"],
        ["export", "--model", b, "--out", tmp_path / "exp"],
    ]
    for argv in commands:
        code, _, err = run_cli(argv, capsys)
        assert code == 2, (argv[0], err)
        assert err.startswith("error: ") and err.strip().count("\n") == 0, (argv[0], err)
        assert f"'{key}'" in err and "manifest.json" in err, (argv[0], err)
    assert not out.exists()  # predict left no empty --out folder


# --- 4/5/8. the CLI's rough edges ------------------------------------------------------------
def test_stream_rejects_bad_outputs_and_inputs_up_front(video, tmp_path, capsys):
    folder = tmp_path / "afolder"
    folder.mkdir()
    for argv, needle in [
        (["--source", video, "--json", folder], "--json must be a file name"),
        (["--source", ""], "--source is empty"),
        (["--source", "   "], "--source is empty"),
        (["--source", video, "--log-every", "-1"], "--log-every"),
    ]:
        code, _, err = run_cli(["stream", "--headless", "--model", tmp_path / "nomodel", *argv],
                               capsys)
        assert code == 2 and needle in err and err.strip().count("\n") == 0, err


def test_file_url_source(video):
    url = "file://" + str(video)
    assert classify_source(url) == "video"
    src = open_source(url)
    try:
        assert src.info.kind == "video" and src.read().status == "ok"
    finally:
        src.close()
    with pytest.raises(UserError, match="source not found"):
        open_source("file:///no/such/clip.mp4")


def test_predict_warns_on_tiny_images_and_leaves_no_blank_stderr_line(bundle_dir, images,
                                                                     tmp_path, capsys):
    cv2.imwrite(str(images / "tiny.png"), np.full((1, 1, 3), 128, np.uint8))
    code, out, err = run_cli(["predict", "--model", bundle_dir, "--images", images, "--out",
                              tmp_path / "p", "--device", "cpu"], capsys)
    assert code == 0, err
    assert "smaller than 32 px" in err and "tiny.png" in err
    assert all(line.strip() for line in err.splitlines())
    code, out, err = run_cli(["predict", "--model", bundle_dir, "--images", images, "--out",
                              tmp_path / "p" / "tiny.png", "--device", "cpu"], capsys)
    assert code == 2 and "is a file" in err  # checked before the model loads


def test_truncated_weights_message_is_not_cut_mid_sentence(bundle_dir, tmp_path):
    d = tmp_path / "b"
    shutil.copytree(bundle_dir, d)
    data = (d / "weights.pt").read_bytes()
    (d / "weights.pt").write_bytes(data[:300])
    with pytest.raises(UserError) as ei:
        load_bundle(d)
    msg = str(ei.value)
    assert msg.endswith(".)") and "\n" not in msg, msg
    assert brief("a " * 200, 50).endswith("...") and len(brief("a " * 200, 50)) <= 53


def test_first_export_says_it_is_building_the_graph(calibrated_bundle, tmp_path, capsys,
                                                    monkeypatch):
    import rtseg.graph.onnx as E

    def fake_export(bundle, path, layer=None, fp16=False, check=True, **k):
        path.write_bytes(b"onnx")

    monkeypatch.setattr(E, "export_onnx", fake_export)
    E.cached_onnx(calibrated_bundle, 14, cache=tmp_path)
    assert "building the fused graph" in capsys.readouterr().err
    E.cached_onnx(calibrated_bundle, 14, cache=tmp_path)  # cached: silent
    assert capsys.readouterr().err == ""


def test_no_opencv_log_lines_on_stderr(bundle_dir, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / "000.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")  # OpenCV warns on this one
    for i in range(1, 4):
        cv2.imwrite(str(frames / f"{i:03d}.png"), np.full((48, 64, 3), 90, np.uint8))
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_LOG_LEVEL"}
    r = subprocess.run([sys.executable, "-m", "rtseg", "stream", "--source", str(frames),
                        "--headless", "--model", str(bundle_dir), "--backend", "torch",
                        "--threads", "1", "--log-every", "0"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    assert "WARN" not in r.stderr and "[ERROR" not in r.stderr, r.stderr
    assert "unreadable 1" in r.stdout
