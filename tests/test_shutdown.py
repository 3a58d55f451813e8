"""Nothing lost on any stop: SIGINT/SIGTERM/SIGHUP in stream, predict and eval.

The subprocess tests send real signals to ``python -m rtseg stream`` on a generated clip, once
its loop runs, and check that the saved video decodes with OpenCV to the number of frames the
JSON reports, that no temporary file is left and that the exit code is 128 + the signal. The
in-process tests deliver signals with ``os.kill(os.getpid(), ...)`` from inside the work.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest
from helpers import run_cli, count_frames

from rtseg.model.manifest import Manifest
from rtseg.runtime.base import Segmenter, SegOutput
from rtseg.shutdown import Interrupted, Shutdown, exit_code, signal_name
from rtseg.live.loop import StreamConfig, run_stream
from rtseg.synthetic import make_dataset, write_video
from rtseg.model.thresholds import ThresholdPolicy

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    p = tmp_path_factory.mktemp("vid") / "clip.mp4"
    write_video(p, n=30, size=(64, 96))
    return p


def leftovers(folder) -> list[str]:
    """Temporary files of the atomic writer (``.NAME.tmp.*``)."""
    return sorted(p.name for p in folder.rglob("*") if ".tmp." in p.name)


class KillSeg(Segmenter):
    """A model-free segmenter that sends ``sig`` to this process at call ``at``."""

    name = "fake"
    device = "cpu"

    def __init__(self, sig: int, at: int) -> None:
        self.manifest = Manifest(input_size=16, threshold=ThresholdPolicy("above", 0.5))
        self.sig, self.at, self.calls = sig, at, 0

    def __call__(self, frames):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), self.sig)
        cam = np.stack([cv2.resize(f[..., 1], (16, 16)).astype(np.float32) / 255 for f in frames])
        return SegOutput(cam.mean(axis=(1, 2)), cam, (cam > 0.5).astype(np.uint8))


# --- the helper itself ---------------------------------------------------------------------
def test_shutdown_flag_mode_records_the_first_signal_and_restores_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with Shutdown("flag") as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.name == "SIGTERM" and stop.exit_code == 143
        with pytest.raises(Interrupted) as ei:  # a second signal stops at once
            os.kill(os.getpid(), signal.SIGHUP)
        assert ei.value.exit_code == 129
    assert signal.getsignal(signal.SIGTERM) is before
    assert exit_code(None) == 130 and signal_name(signal.SIGHUP) == "SIGHUP"


def test_shutdown_raise_mode_and_ignored_signals_stay_ignored():
    with pytest.raises(Interrupted) as ei, Shutdown("raise"):
        os.kill(os.getpid(), signal.SIGINT)
    assert ei.value.name == "SIGINT" and ei.value.exit_code == 130
    old = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # what nohup does
    try:
        with Shutdown("flag") as stop:
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.01)
            assert not stop.requested
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, old)


def test_loop_shutdown_takes_over_an_early_signal():
    from rtseg.cli import _command
    from rtseg.shutdown import loop_shutdown

    with Shutdown("flag") as outer:  # what rtseg.cli.main enters for stream and predict
        os.kill(os.getpid(), signal.SIGTERM)  # while typer parses the command line
        with loop_shutdown() as inner:
            assert inner is outer and inner.requested and inner.exit_code == 143
        assert signal.getsignal(signal.SIGTERM) == outer._handle  # still the outer's
    with Shutdown("raise"), loop_shutdown() as fresh:
        assert fresh.mode == "flag" and not fresh.requested
    assert _command(["--version"]) is None and _command(["stream", "--headless"]) == "stream"


# --- stream, in process ----------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_stream_signal_finalises_video_and_stats(sig, video, tmp_path):
    out, js = tmp_path / "out.mp4", tmp_path / "s.json"
    res = run_stream(StreamConfig(source=str(video), headless=True, quiet=True, save=str(out),
                                  json=str(js), loop=True), segmenter=KillSeg(sig, at=10))
    assert res.interrupted and res.signal == signal_name(sig) and res.exit_code == 128 + sig
    s = json.loads(js.read_text())
    assert s["interrupted"] and s["signal"] == signal_name(sig)
    assert s["frames_written"] == s["frames_processed"] == count_frames(out) >= 6
    assert leftovers(tmp_path) == []


def test_stream_signal_before_the_first_frame_saves_stats_and_no_video(video, tmp_path):
    out, js = tmp_path / "out.mp4", tmp_path / "s.json"
    res = run_stream(StreamConfig(source=str(video), headless=True, quiet=True, save=str(out),
                                  json=str(js)), segmenter=KillSeg(signal.SIGTERM, at=1))
    assert res.exit_code == 143
    s = json.loads(js.read_text())
    assert s["interrupted"] and s["frames_written"] == 0 and s["saved"] is None
    assert not out.exists() and leftovers(tmp_path) == []


def test_stream_signal_while_the_model_loads_stops_at_once(video, tmp_path, monkeypatch):
    def slow_load(*a, **k):
        os.kill(os.getpid(), signal.SIGHUP)
        time.sleep(30)  # interrupted by the handler, not waited for
        raise AssertionError("loading was not interrupted")

    monkeypatch.setattr("rtseg.live.loop.load_segmenter", slow_load)
    js = tmp_path / "s.json"
    t0 = time.monotonic()
    res = run_stream(StreamConfig(source=str(video), headless=True, quiet=True,
                                  save=str(tmp_path / "o.mp4"), json=str(js)))
    assert time.monotonic() - t0 < 10 and res.exit_code == 129
    s = json.loads(js.read_text())
    assert s["signal"] == "SIGHUP" and s["frames_written"] == 0 and s["backend"] == "not loaded"
    assert not (tmp_path / "o.mp4").exists() and leftovers(tmp_path) == []


def test_stream_cli_ctrl_c_exits_130_with_the_summary(video, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("rtseg.live.loop.load_segmenter",
                        lambda *a, **k: KillSeg(signal.SIGINT, at=6))
    js = tmp_path / "s.json"
    code, out, err = run_cli(["stream", "--source", video, "--headless", "--json", js,
                              "--log-every", "0"], capsys)
    assert code == 130, err
    assert "interrupted (SIGINT)" in out and "Table 2" in out
    assert json.loads(js.read_text())["signal"] == "SIGINT"


# --- stream, a real process --------------------------------------------------------------------
def _lines(pipe, q):
    for line in pipe:
        q.put(line)
    q.put(None)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_stream_subprocess_signal(sig, video, bundle_dir, tmp_path):
    out, js = tmp_path / "out.mp4", tmp_path / "s.json"
    env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="200", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "rtseg", "stream", "--source", str(video), "--loop",
           "--headless", "--model", str(bundle_dir), "--backend", "torch", "--threads", "1",
           "--save", str(out), "--json", str(js), "--log-every", "0.2"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    q: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(p.stdout, q), daemon=True).start()
    deadline = time.monotonic() + 120
    try:
        while True:  # the first progress line: the loop is running and writing
            line = q.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line is not None, p.stderr.read()
            if line.startswith("frames "):
                break
        p.send_signal(sig)
        rc = p.wait(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    err = p.stderr.read()
    assert rc == 128 + sig, err
    assert "Traceback" not in err
    s = json.loads(js.read_text())
    assert s["interrupted"] and s["signal"] == signal_name(sig)
    assert s["frames_written"] > 0 and count_frames(out) == s["frames_written"]
    assert leftovers(tmp_path) == []


# --- predict and eval ----------------------------------------------------------------------
@pytest.fixture()
def images(tmp_path):
    d = tmp_path / "images"
    m = tmp_path / "masks"
    d.mkdir()
    m.mkdir()
    for i, s in enumerate(make_dataset(3, 3, size=(64, 64), seed=1)):
        cv2.imwrite(str(d / f"{i}.png"), s.image[..., ::-1])
        cv2.imwrite(str(m / f"{i}.png"), s.mask.astype(np.uint8) * 255)
    return d, m


def test_predict_sigterm_writes_the_csv_of_the_masks_done(bundle_dir, images, tmp_path, capsys,
                                                          monkeypatch):
    import rtseg.evaluate.predict as P

    real, calls = P.write_mask, []

    def write_then_kill(path, mask):
        real(path, mask)
        calls.append(path)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(P, "write_mask", write_then_kill)
    out = tmp_path / "preds"
    code, _, err = run_cli(["predict", "--model", bundle_dir, "--images", images[0], "--out", out,
                            "--batch", "2", "--device", "cpu"], capsys)
    assert code == 143, err
    assert "interrupted by SIGTERM after 2 of 6 images" in err and "predictions.csv" in err
    assert len(err.strip().splitlines()) == 1
    rows = (out / "predictions.csv").read_text().splitlines()
    assert len(rows) == 3 and len(list(out.glob("*.png"))) == 2
    assert leftovers(out) == []


def test_predict_signal_while_the_model_loads_writes_nothing(images, tmp_path, capsys,
                                                           monkeypatch):
    def slow_load(model, device):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(30)  # interrupted by the handler, not waited for
        raise AssertionError("loading was not interrupted")

    monkeypatch.setattr("rtseg.cli.inference._load", slow_load)
    out = tmp_path / "preds"
    t0 = time.monotonic()
    code, _, err = run_cli(["predict", "--images", images[0], "--out", out], capsys)
    assert code == 130 and time.monotonic() - t0 < 10
    assert err.startswith("error: interrupted by SIGINT") and err.strip().count("\n") == 0
    assert not out.exists()


def test_eval_sigterm_is_one_line_and_writes_nothing(bundle_dir, images, tmp_path, capsys,
                                                     monkeypatch):
    from rtseg.pipeline.runner import Runner

    real, calls = Runner.__call__, []

    def cams_then_kill(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **k)

    monkeypatch.setattr(Runner, "__call__", cams_then_kill)
    js = tmp_path / "m.json"
    code, _, err = run_cli(["eval", "--model", bundle_dir, "--images", images[0], "--masks",
                            images[1], "--json", js, "--batch", "2", "--device", "cpu"], capsys)
    assert code == 143
    assert err.startswith("error: interrupted by SIGTERM") and err.strip().count("\n") == 0
    assert not js.exists() and leftovers(tmp_path) == []
