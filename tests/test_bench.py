"""rtseg bench and the pytorch-grad-cam style baseline."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rtseg.live.bench import PAPER_FPS, PytorchGradCamBaseline, parse_batches
from rtseg.errors import UserError
from rtseg.live.stats import TABLE2_FIELDS
from rtseg.model.bundle import load_bundle
from rtseg.runtime import create_segmenter
from rtseg.synthetic import clip_frames, write_video

from helpers import run_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")




def test_bench_model_rows_and_json(bundle_dir, tmp_path, capsys):
    js = tmp_path / "bench.json"
    code, out, err = run_cli(["bench", "--model", bundle_dir, "--backend", "torch",
                              "--batch", "1,2", "--frames", "4", "--json", str(js)], capsys)
    assert code == 0, err
    r = json.loads(js.read_text())
    rows = {x["label"]: x for x in r["rows"]}
    hd = [f"torch b{b} 1920x1080{s}" for b in (1, 2) for s in ("", " in-graph resize")]
    assert set(rows) == {"torch b1", "torch b2", "baseline b1", "baseline b2", *hd}
    assert rows["torch b1 1920x1080"]["frame"] == "1920x1080" and rows["torch b1"]["frame"] == "384x288"
    for x in rows.values():
        for k in TABLE2_FIELDS:
            assert x[k] > 0
        assert x["frames"] == 4 and x["mode"] == "model" and x["input_size"] == 64
    assert rows["baseline b1"]["x_baseline"] == pytest.approx(1.0)
    assert rows["torch b1"]["x_baseline"] > 0 and rows["torch b2"]["x_baseline"] > 0
    assert [p["Av-fps"] for p in r["paper"]] == [fps for _, fps in PAPER_FPS]
    assert r["device"] == "cpu" and r["device_name"]
    assert "torch b1" in out and "baseline b2" in out and "9.34" in out and "11.00" in out


def test_bench_whole_loop_on_a_video(bundle_dir, tmp_path, capsys):
    vid = tmp_path / "clip.mp4"
    write_video(vid, n=6, size=(48, 64))
    js = tmp_path / "bench.json"
    code, out, err = run_cli(["bench", "--model", bundle_dir, "--backend", "torch", "--batch", "1",
                              "--frames", "8", "--source", str(vid), "--json", str(js)], capsys)
    assert code == 0, err
    r = json.loads(js.read_text())
    assert r["mode"] == "loop"
    for x in r["rows"]:
        assert x["frames"] == 8  # the 6-frame clip is looped
        assert {"decode", "infer", "overlay"} <= set(x["stages_ms"])


def test_bench_errors(bundle_dir, capsys):
    code, _, err = run_cli(["bench", "--model", bundle_dir, "--backend", "tensorrt"], capsys)
    assert code == 2 and "not available" in err  # no TensorRT on a CPU machine
    code, _, err = run_cli(["bench", "--model", bundle_dir, "--batch", "1,x"], capsys)
    assert code == 2 and err.startswith("error: --batch")
    code, _, err = run_cli(["bench", "--model", bundle_dir, "--size", "128", "--frames", "1",
                            "--batch", "1", "--backend", "torch"], capsys)
    assert code == 2 and "input size is 64" in err
    with pytest.raises(UserError):
        parse_batches("0")


def test_baseline_matches_the_eager_cam_and_computes_weight_grads(bundle_dir):
    frames = np.stack(list(clip_frames(2, (72, 96))))
    base = PytorchGradCamBaseline(load_bundle(bundle_dir))
    eager = create_segmenter(bundle_dir, "torch", "cpu")
    b, e = base(eager.views(frames)[0]), eager(frames)  # the same S x S views
    assert b.cam.shape == e.cam.shape == (2, 64, 64) and b.mask.dtype == np.uint8
    assert b.cam.min() >= 0 and b.cam.max() <= 1.0 + 1e-6
    np.testing.assert_allclose(b.prob, e.prob, rtol=1e-4, atol=1e-6)
    for i in range(2):  # same Grad-CAM; only the resize/normalise order differs
        assert np.corrcoef(b.cam[i].ravel(), e.cam[i].ravel())[0, 1] > 0.95
    grads = [p.grad for p in base.model.parameters()]
    assert all(g is not None for g in grads)  # the full backward pass: every weight gradient
    base.close()


def test_frame_costs_times_every_step_of_every_frame(bundle_dir, tmp_path):
    """benchmarks/frame_costs.py: each step timed on each frame after the warm-up, and the
    CPU bound is the cores over the steps' CPU time."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import frame_costs
    finally:
        sys.path.pop(0)
    clip = tmp_path / "clip.mp4"
    write_video(clip, 12, (96, 128), 25.0)
    seg = create_segmenter(str(bundle_dir), "torch", "cpu", False)
    try:
        r = frame_costs.time_clip(clip, seg, 100)
    finally:
        seg.close()
    assert r["frames"] == 12 - 5 and r["size"] == "128x96"
    assert set(r["steps"]) == set(frame_costs.STEPS)
    for s in r["steps"].values():
        assert 0 <= s["min_ms"] <= s["median_ms"] <= s["max_ms"] and s["cpu_ms"] >= 0
    assert r["cpu_ms_per_frame"] == pytest.approx(sum(s["cpu_ms"] for s in r["steps"].values()))
    assert r["fps_bound"] == pytest.approx(1e3 * r["cores"] / r["cpu_ms_per_frame"])
