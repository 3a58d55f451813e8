"""The one frame pipeline: ``rtseg stream``, ``rtseg batch`` and ``rtseg predict`` give every
frame the same probability and the same mask, whatever the frame size and wherever its active
area lies."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest

from rtseg.synthetic import clip_frames

N = 12
HW = (90, 160)  # 16:9 with black side margins, like a 1080p endoscopy feed (scaled down)


def _frames() -> list[np.ndarray]:
    """Synthetic endoscopy in a 16:9 frame; the lit area moves halfway (another scope position),
    so a box kept from earlier frames would cut the later ones wrongly."""
    out = []
    for i, f in enumerate(clip_frames(N, (90, 110), seed=3)):
        canvas = np.full(HW + (3,), 8, np.uint8)
        x0 = 25 if i < N // 2 else 40
        canvas[:, x0:x0 + 110 - (0 if i < N // 2 else 15)] = f[:, :110 - (0 if i < N // 2 else 15)]
        out.append(canvas)
    return out


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A lossless video of the frames, and PNG files of the very frames it decodes to."""
    d = tmp_path_factory.mktemp("same")
    video = d / "clip.avi"
    vw = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"FFV1"), 25.0, HW[::-1])
    for f in _frames():
        vw.write(f)
    vw.release()
    cap, pngs = cv2.VideoCapture(str(video)), d / "png"
    pngs.mkdir()
    for i in range(N):
        ok, f = cap.read()
        assert ok
        cv2.imwrite(str(pngs / f"{i:03d}.png"), f)
    cap.release()
    return video, pngs


@pytest.fixture(scope="module")
def active_bundle(calibrated_bundle):
    return dataclasses.replace(calibrated_bundle,
                               manifest=calibrated_bundle.manifest.replace(active_area=True))


def _stream(video, seg, monkeypatch):
    from rtseg.live.loop import StreamConfig, run_stream
    from rtseg.live.overlay import Overlay

    seen, draw = [], Overlay.draw

    def spy(self, frame, mask, cam=None, prob=None, fps=None, box=None):
        seen.append((prob, (mask > 0).copy()))
        return draw(self, frame, mask, cam, prob, fps, box=box)

    monkeypatch.setattr(Overlay, "draw", spy)
    run_stream(StreamConfig(source=str(video), headless=True, quiet=True, call_smoothing=0.0,
                            batch=2), segmenter=seg)
    monkeypatch.undo()
    return [p for p, _ in seen], [m for _, m in seen]


def _batch(video, seg, out):
    from rtseg.batch.inputs import discover, plan_units
    from rtseg.batch.work import UnitContext, process_unit

    unit = plan_units(discover(str(video)), out, "sig", 4)[0]
    ctx = UnitContext(seg, {"table": "csv", "batch": 2, "save_masks": True, "call_smoothing": 0.0})
    assert process_unit(unit, ctx)["status"] == "done"
    final = Path(unit["final"])
    with open(final / "frames.csv", newline="") as fh:
        probs = [float(r["prob"]) for r in csv.DictReader(fh)]
    masks = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) > 0 for p in sorted((final / "masks").glob("*.png"))]
    return probs, masks


def _predict(pngs, bundle, seg, out):
    from rtseg.evaluate.predict import predict_folder

    predict_folder(bundle, pngs, out, batch_size=2, segmenter=seg)
    with open(out / "predictions.csv", newline="") as fh:
        probs = [float(r["prob"]) for r in csv.DictReader(fh)]
    masks = [cv2.imread(str(out / f"{i:03d}.png"), cv2.IMREAD_GRAYSCALE) > 0 for i in range(N)]
    return probs, masks


def test_stream_batch_and_predict_agree_on_every_frame(clip, active_bundle, tmp_path, monkeypatch):
    from rtseg.model.active_area import detect_box
    from rtseg.runtime import create_segmenter

    video, pngs = clip
    boxes = {detect_box(cv2.imread(str(p))) for p in sorted(pngs.glob("*.png"))}
    assert len(boxes) >= 2 and all(b.x0 > 0 for b in boxes)  # margins, and the view moves
    seg = create_segmenter(active_bundle, "torch", "cpu")
    # the same batch size everywhere (2): a backend's sums may round differently per batch size
    s_p, s_m = _stream(video, seg, monkeypatch)
    b_p, b_m = _batch(video, seg, tmp_path / "batch")
    p_p, p_m = _predict(pngs, active_bundle, seg, tmp_path / "pred")
    assert len(s_p) == len(b_p) == len(p_p) == N
    np.testing.assert_array_equal(np.float32(s_p), np.float32(b_p))
    np.testing.assert_allclose(s_p, p_p, atol=5e-7)  # predictions.csv keeps 6 decimals
    assert any(m.any() for m in s_m) and not all(m.all() for m in s_m)  # masks say something
    for i in range(N):
        assert s_m[i].shape == HW
        np.testing.assert_array_equal(s_m[i], b_m[i], err_msg=f"stream vs batch, frame {i}")
        np.testing.assert_array_equal(s_m[i], p_m[i], err_msg=f"stream vs predict, frame {i}")


def test_one_call_rule():
    from rtseg.model.call import is_polyp

    assert is_polyp(0.5000001) and not is_polyp(0.5) and not is_polyp(np.float32(0.5))
    assert list(is_polyp(np.array([0.2, 0.5, 0.7]))) == [False, False, True]


def test_batch_workers_run_the_same_view_as_every_segmenter(calibrated_bundle, onnx_cache):
    """rtseg batch's workers build their ONNX segmenter themselves: it must sit behind the same
    view (they once ran the whole frame, margins and all, through the graph)."""
    from rtseg.batch.run import build_segmenter
    from rtseg.graph.onnx import cached_onnx
    from rtseg.runtime import create_segmenter
    from rtseg.runtime.active import ViewSegmenter

    path = cached_onnx(calibrated_bundle, 14, cache=onnx_cache)
    payload = {"files": {path.name: path.read_bytes()}, "entry": path.name,
               "backend": "onnxruntime", "device": "cpu", "layer": None}
    worker = build_segmenter(payload, threads=1)
    assert isinstance(worker, ViewSegmenter)
    frames = np.stack(_frames()[:2])
    a, b = worker(frames), create_segmenter(str(path), "onnxruntime", "cpu")(frames)
    np.testing.assert_array_equal(a.prob, b.prob)
    np.testing.assert_array_equal(a.cam, b.cam)


def test_a_missing_default_model_is_one_error_line(monkeypatch, capsys):
    """No stand-in network: without the shipped model (and no --model) every command stops."""
    from helpers import run_cli

    monkeypatch.setattr("rtseg.runtime.loader.default_model_available", lambda: False)
    for args in (["stream", "--headless", "--max-frames", "1"], ["bench", "--frames", "1"]):
        code, _, err = run_cli(args, capsys)
        assert code == 2 and err.startswith("error: the default model is missing"), err
        assert err.strip().count("\n") == 0
