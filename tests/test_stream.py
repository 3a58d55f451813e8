"""rtseg stream: sources, the loop, overlay, smoothing, stats, saving, errors."""

from __future__ import annotations

import json
import time

import cv2
import numpy as np
import pytest
from helpers import run_cli, count_frames

from rtseg.live.capture import FrameSource, ReadResult, SourceInfo, classify_source, open_source
from rtseg.live.reader import FrameReader
from rtseg.live.stats import RESERVOIR, TABLE2_FIELDS, RunningStats, StreamStats, table2
from rtseg.model.manifest import Manifest
from rtseg.live.overlay import Overlay
from rtseg.runtime.base import Segmenter, SegOutput
from rtseg.errors import UserError
from rtseg.live.loop import StreamConfig, run_stream
from rtseg.live.smoothing import CallSmoother, CamSmoother
from rtseg.synthetic import clip_frames, write_video
from rtseg.model.thresholds import ThresholdPolicy
from rtseg.model.cam import cam_to_mask

N_FRAMES = 30
SIZE = (64, 96)  # (H, W) of the generated clips


# --- helpers -------------------------------------------------------------------------------
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    p = tmp_path_factory.mktemp("vid") / "clip.mp4"
    write_video(p, n=N_FRAMES, size=SIZE)
    return p


class FakeSeg(Segmenter):
    """A model-free segmenter: cam = the frame's grey level (downscaled), optional hooks."""

    name = "fake"
    device = "cpu"

    def __init__(self, size: int = 16, fail_at: int | None = None, cams=None) -> None:
        self.manifest = Manifest(input_size=size, threshold=ThresholdPolicy("above", 0.5))
        self.calls = 0
        self.fail_at = fail_at
        self.cams = cams
        self.seen: list[float] = []

    def __call__(self, frames):
        s = self.manifest.input_size
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise KeyboardInterrupt
        cams = []
        for f in frames:
            self.seen.append(float(f.mean()))
            if self.cams is not None:
                cams.append(self.cams[len(self.seen) - 1])
            else:
                g = cv2.resize(cv2.cvtColor(f, cv2.COLOR_BGR2GRAY), (s, s)).astype(np.float32)
                cams.append(g / 255.0)
        cam = np.stack(cams).astype(np.float32)
        return SegOutput(cam.mean(axis=(1, 2)), cam, (cam > 0.5).astype(np.uint8))


# --- the CLI end to end, real (small) model --------------------------------------------------
def test_video_headless_save_and_json(bundle_dir, video, tmp_path, capsys):
    out, js = tmp_path / "out.mp4", tmp_path / "stats.json"
    code, stdout, err = run_cli(["stream", "--source", str(video), "--model", bundle_dir,
                                 "--backend", "torch",
                                 "--headless", "--save", str(out), "--json", str(js)], capsys)
    assert code == 0, err
    s = json.loads(js.read_text())
    assert s["frames_read"] == N_FRAMES == s["frames_processed"] == s["frames_written"]
    assert s["frames_dropped"] == 0 and s["frames_unreadable"] == 0
    assert count_frames(out) == N_FRAMES
    for k in TABLE2_FIELDS:
        assert s["table2"][k] > 0
    t = s["table2"]
    assert t["Mi-time"] <= t["Av-time"] <= t["Ma-time"]
    assert t["Mi-fps"] <= t["Av-fps"] <= t["Ma-fps"]
    assert {"decode", "infer", "overlay", "write"} <= set(s["stages_ms"])
    assert s["backend"] == "torch-eager" and s["device"] == "cpu"
    assert s["source"] == str(video) and s["model_input_size"] == 64
    lat = s["latency_ms"]  # capture -> overlay ready, every frame
    assert lat["count"] == N_FRAMES and 0 < lat["median"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert "latency capture -> overlay ready" in stdout
    assert "Av-fps" in stdout and "Mi-time" in stdout
    assert not list(tmp_path.glob(".*tmp*")), "temporary files left behind"


def test_batched_with_smoothing_and_heatmap(bundle_dir, video, tmp_path, capsys):
    js = tmp_path / "s.json"
    code, _, err = run_cli(["stream", "--source", str(video), "--model", bundle_dir, "--backend", "torch",
                            "--headless",
                            "--batch", "4", "--smooth", "0.5", "--heatmap", "--max-frames", "10",
                            "--json", str(js)], capsys)
    assert code == 0, err
    s = json.loads(js.read_text())
    assert s["frames_processed"] == 10 and s["batch"] == 4 and s["smooth"] == 0.5


def test_folder_source_natural_order(bundle_dir, tmp_path, capsys):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in (1, 2, 10, 3):  # lexical order would put 10 before 2 and 3
        cv2.imwrite(str(folder / f"{i}.png"), np.full((40, 48, 3), 20 * i, np.uint8))
    (folder / "5.png").write_bytes(b"not a png")  # corrupt: counted, skipped
    seg = FakeSeg()
    res = run_stream(StreamConfig(source=str(folder), headless=True, quiet=True), segmenter=seg)
    assert seg.seen[3:] == [20.0, 40.0, 60.0, 200.0]  # after the 3 warm-up calls
    assert res.stats["frames_read"] == 4 and res.stats["frames_unreadable"] == 1
    # and through the CLI with the real model
    js = tmp_path / "s.json"
    code, _, err = run_cli(["stream", "--source", str(folder), "--model", bundle_dir, "--backend", "torch",
                            "--headless", "--json", str(js)], capsys)
    assert code == 0, err
    assert json.loads(js.read_text())["frames_processed"] == 4


def test_single_image(bundle_dir, tmp_path, capsys):
    img = tmp_path / "one.jpg"
    cv2.imwrite(str(img), next(iter(clip_frames(1, (72, 96)))))
    out, js = tmp_path / "one.mp4", tmp_path / "s.json"
    code, _, err = run_cli(["stream", "--source", str(img), "--model", bundle_dir, "--backend", "torch",
                            "--headless",
                            "--save", str(out), "--json", str(js)], capsys)
    assert code == 0, err
    s = json.loads(js.read_text())
    assert s["frames_processed"] == 1 and s["source_kind"] == "image"
    assert count_frames(out) == 1


def test_truncated_mp4_is_an_error(video, tmp_path, bundle_dir, capsys):
    """An mp4 cut in half has lost its index (moov atom): exit 2 with one error line."""
    bad = tmp_path / "half.mp4"
    data = video.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    code, _, err = run_cli(["stream", "--source", str(bad), "--model", bundle_dir, "--backend", "torch",
                            "--headless"],
                           capsys)
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot open video file"), err


def test_truncated_avi_ends_cleanly(tmp_path):
    """A truncated AVI opens; the readable frames stream, the lost tail counts as unreadable."""
    avi = tmp_path / "clip.avi"
    vw = cv2.VideoWriter(str(avi), cv2.VideoWriter_fourcc(*"MJPG"), 25, (SIZE[1], SIZE[0]))
    for f in clip_frames(N_FRAMES, SIZE):
        vw.write(f)
    vw.release()
    data = avi.read_bytes()
    half = tmp_path / "half.avi"
    half.write_bytes(data[: len(data) // 2])
    seg = FakeSeg()
    s = run_stream(StreamConfig(source=str(half), headless=True, quiet=True,
                                json=str(tmp_path / "s.json")), segmenter=seg).stats
    assert 0 < s["frames_read"] < N_FRAMES
    assert s["frames_processed"] == s["frames_read"]
    assert s["frames_read"] + s["frames_unreadable"] == N_FRAMES
    assert json.loads((tmp_path / "s.json").read_text())["frames_unreadable"] > 0


def test_missing_source_and_bad_options(bundle_dir, tmp_path, capsys):
    code, _, err = run_cli(["stream", "--source", str(tmp_path / "nope.mp4"), "--headless",
                            "--model", bundle_dir, "--backend", "torch"], capsys)
    assert code == 2 and err.strip().count("\n") == 0 and "source not found" in err
    code, _, err = run_cli(["stream", "--headless", "--smooth", "1.5"], capsys)
    assert code == 2 and err.startswith("error: --smooth")
    code, _, err = run_cli(["stream", "--headless", "--backend", "nosuch"], capsys)
    assert code == 2 and "backend 'nosuch'" in err


def test_unwritable_save_path(bundle_dir, video, tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")  # a file where a folder should be: unwritable even for root
    code, _, err = run_cli(["stream", "--source", str(video), "--model", bundle_dir, "--backend", "torch",
                            "--headless", "--save", str(blocker / "out.mp4")], capsys)
    assert code == 2 and err.startswith("error: ") and err.strip().count("\n") == 0
    code, _, err = run_cli(["stream", "--source", str(video), "--model", bundle_dir, "--backend", "torch",
                            "--headless", "--save", str(tmp_path / "out.txt")], capsys)
    assert code == 2 and ".mp4" in err


def test_no_display_suggests_headless(monkeypatch, video, capsys):
    for v in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(v, raising=False)
    code, _, err = run_cli(["stream", "--source", str(video)], capsys)
    assert code == 2 and "--headless" in err and err.strip().count("\n") == 0


def test_ctrl_c_leaves_a_playable_video_and_stats(video, tmp_path):
    out, js = tmp_path / "out.mp4", tmp_path / "s.json"
    seg = FakeSeg(fail_at=8)  # warm-up takes 3 calls; frames 1-4 are written, then Ctrl-C
    res = run_stream(StreamConfig(source=str(video), headless=True, quiet=True, save=str(out),
                                  json=str(js)), segmenter=seg)
    assert res.interrupted
    s = json.loads(js.read_text())
    assert s["interrupted"] and s["frames_processed"] == 4 == s["frames_written"]
    assert count_frames(out) == 4


def test_help_has_examples(capsys):
    for cmd in ("stream", "bench"):
        code, out, _ = run_cli([cmd, "--help"], capsys)
        assert code == 0 and "Example" in out and f"rtseg {cmd}" in out


# --- smoothing -----------------------------------------------------------------------------
def test_smoother_is_an_ema_across_batches():
    rng = np.random.default_rng(0)
    cams = rng.random((7, 8, 8)).astype(np.float32)
    policy = ThresholdPolicy("above", 0.5)
    a = 0.6
    expect, state = [], None
    for c in cams:
        state = c.copy() if state is None else a * state + (1 - a) * c
        expect.append(state)
    expect = np.stack(expect)
    sm = CamSmoother(a)
    got_c = [sm(cams[i:j]) for i, j in ((0, 3), (3, 4), (4, 7))]
    np.testing.assert_allclose(np.concatenate(got_c), expect, rtol=1e-5, atol=1e-6)
    assert not np.array_equal(policy.apply(expect), policy.apply(cams))  # smoothing changes masks
    assert CamSmoother(0.0)(cams) is cams  # a = 0: the segmenter's own map


@pytest.fixture
def drawn_masks(monkeypatch):
    """The masks the loop hands to the overlay, in order."""
    drawn = []
    orig = Overlay.draw

    def spy(self, frame, mask, cam=None, prob=None, fps=None, box=None):
        drawn.append(mask.copy())
        return orig(self, frame, mask, cam, prob, fps, box=box)

    monkeypatch.setattr(Overlay, "draw", spy)
    return drawn


def test_smooth_option_changes_the_loop_masks(video, drawn_masks):
    """Through the loop: the masks drawn are the EMA's, thresholded by the manifest's policy."""
    rng = np.random.default_rng(1)
    cams = rng.random((N_FRAMES + 3, 16, 16)).astype(np.float32)  # +3: warm-up calls
    drawn = drawn_masks
    seq = {}
    for a in (0.0, 0.7):
        drawn.clear()
        seg = FakeSeg(cams=cams)
        run_stream(StreamConfig(source=str(video), headless=True, quiet=True, smooth=a,
                                max_frames=6), segmenter=seg)
        seq[a] = np.stack(drawn)
    live = cams[3:9]  # the frames after the 3 warm-up calls
    policy, hw = FakeSeg().manifest.threshold, seq[0.0].shape[1:]
    np.testing.assert_array_equal(seq[0.0], [cam_to_mask(c, policy, hw) for c in live])
    state, expect = None, []
    for c in live:
        state = c.copy() if state is None else 0.7 * state + 0.3 * c
        expect.append(cam_to_mask(state, policy, hw))  # the runner's one mask, at frame size
    np.testing.assert_array_equal(seq[0.7], np.stack(expect).astype(np.uint8))
    assert not np.array_equal(seq[0.7], seq[0.0])


def test_call_smoother_is_an_ema_of_the_call_and_the_runner_gates_the_mask():
    """p_t = a p_(t-1) + (1 - a) p_new across batches; the frame's own mask only where p_t is
    called polyp (the runner)."""
    from rtseg.pipeline.runner import Runner

    probs = np.array([0.0, 0.9, 0.0, 0.0, 0.9, 0.9, 0.9, 0.2, 0.9], np.float32)
    a, state, expect = 0.6, None, []
    for p in probs:
        state = p if state is None else a * state + (1 - a) * p
        expect.append(state)
    sm = CallSmoother(a)
    p_got = np.concatenate([sm(probs[i:j]) for i, j in ((0, 2), (2, 3), (3, 9))])
    np.testing.assert_allclose(p_got, expect, rtol=1e-6)
    assert CallSmoother(0.0)(probs) is probs  # a = 0: every frame alone
    cams = np.ones((len(probs), 16, 16), np.float32) * probs[:, None, None]  # prob = mean
    runner = Runner(FakeSeg(cams=cams), call_smoothing=a)
    frames = [np.zeros((8, 8, 3), np.uint8)] * len(probs)
    got = runner(frames[:2]) + runner(frames[2:3]) + runner(frames[3:])
    called = np.asarray(expect) > 0.5
    assert [r.called for r in got] == list(called)
    assert not called[1] and got[1].mask.sum() == 0  # a one-frame spike after a clean frame: no mask
    assert called[7] and got[7].mask.sum() == 0  # called, but the frame's own map says no: no mask
    assert all(r.mask.all() for r, c, p in zip(got, called, probs) if c and p > 0.5)


def _spike_cams(n: int) -> np.ndarray:
    """Frame cams: 0 everywhere, a one-frame spike at 5, a polyp from 10 on (prob = mean)."""
    cams = np.zeros((n, 16, 16), np.float32)
    cams[5] = 0.9
    cams[10:] = 0.9
    return cams


@pytest.mark.parametrize("override", [None, 0.0])
def test_loop_takes_the_manifests_call_smoothing(video, drawn_masks, override, tmp_path):
    """The model's call_smoothing filters the drawn calls (a spike draws no mask, a polyp does
    after its time constant); --call-smoothing 0 shows every frame alone."""
    cams = _spike_cams(N_FRAMES + 3)  # +3: the warm-up calls come first
    seg = FakeSeg(cams=cams[[0, 0, 0] + list(range(N_FRAMES))])
    seg.manifest = seg.manifest.replace(call_smoothing=0.6)
    js = tmp_path / "s.json"
    run_stream(StreamConfig(source=str(video), headless=True, quiet=True, max_frames=16,
                            call_smoothing=override, json=str(js)), segmenter=seg)
    shown = [int(m.any()) for m in drawn_masks]
    if override is None:
        assert shown == [0] * 11 + [1] * 5  # spike at 5 gone; polyp at 10 shown from 11 on
    else:
        assert shown == [0] * 5 + [1] + [0] * 4 + [1] * 6
    stats = json.loads(js.read_text())
    assert stats["call_smoothing"] == (0.6 if override is None else 0.0)
    assert stats["frames_called_polyp"] == sum(shown)  # the label drawn agrees with the masks here


def test_call_smoothing_is_checked():
    with pytest.raises(UserError, match="call-smoothing"):
        StreamConfig(call_smoothing=0.95).check()
    from rtseg.batch.run import BatchConfig

    with pytest.raises(UserError, match="call-smoothing"):
        BatchConfig(input="in", out="out", call_smoothing=-0.1).check()
    with pytest.raises(UserError, match="call_smoothing"):
        Manifest.from_dict({**Manifest().to_dict(), "call_smoothing": 1.5}, "m.json")
    m = Manifest.from_dict({**Manifest().to_dict(), "call_smoothing": 0.7}, "m.json")
    assert m.call_smoothing == 0.7 and Manifest.from_dict(m.to_dict()).call_smoothing == 0.7


def test_manifest_postprocess_runs_on_the_loop_masks(video, drawn_masks):
    """A manifest's mask clean-up (e.g. keep the largest component) applies to the drawn masks."""
    cam = np.zeros((16, 16), np.float32)
    cam[1:4, 1:4] = 0.9  # small blob
    cam[8:14, 8:14] = 0.8  # large blob
    seg = FakeSeg(cams=np.repeat(cam[None], N_FRAMES + 3, 0))
    seg.manifest = seg.manifest.replace(postprocess=("largest",))
    drawn = drawn_masks
    run_stream(StreamConfig(source=str(video), headless=True, quiet=True, max_frames=2),
               segmenter=seg)
    hw = drawn[0].shape
    expect = cam_to_mask(cam, seg.manifest.threshold, hw, ("largest",))
    assert 0 < expect.sum() < cam_to_mask(cam, seg.manifest.threshold, hw).sum()  # a blob went
    for m in drawn:
        np.testing.assert_array_equal(m, expect)


# --- capture -------------------------------------------------------------------------------
def test_classify_source(tmp_path):
    assert classify_source(None) == "demo"
    assert classify_source("0") == "camera"
    assert classify_source("rtsp://host/stream") == "url"
    assert classify_source("http://host/video.mjpg") == "url"
    assert classify_source(str(tmp_path)) == "folder"
    assert classify_source("x.png") == "image"
    assert classify_source("x.mp4") == "video"


class LiveFake(FrameSource):
    """A live source: ``n`` frames as fast as asked, then it fails; reopen fails too."""

    def __init__(self, n: int, reopen_ok: int = 0) -> None:
        self.info = SourceInfo("fake://", "url", True, 25.0, (8, 8))
        self.n, self.i, self.reopens, self.reopen_ok = n, 0, 0, reopen_ok
        self.missing = 0

    def read(self):
        if self.i >= self.n:
            return ReadResult("end")
        self.i += 1
        return ReadResult("ok", np.full((8, 8, 3), self.i % 256, np.uint8))

    def reopen(self):
        self.reopens += 1
        if self.reopens <= self.reopen_ok:
            self.n += 5
            return True
        return False


def test_live_source_drops_oldest_and_ends_when_lost():
    src = LiveFake(200, reopen_ok=1)
    r = FrameReader(src, queue_size=2, retries=2, retry_delay=0.01).start()
    time.sleep(0.3)  # the consumer is slow: the producer overwrites the queue
    got = []
    while (b := r.get_batch(1)) is not None:
        got.append(int(b[0].image[0, 0, 0]))
    r.stop()
    c = r.snapshot()
    assert c.read == 205 and c.reconnects == 1 and c.lost
    assert c.dropped > 0 and c.dropped + len(got) == c.read
    assert got[-1] == 205 % 256  # the newest frame always arrives
    assert src.reopens == 3  # 1 successful + 2 failed retries


def test_file_source_never_drops(video):
    r = FrameReader(open_source(str(video)), queue_size=2).start()
    time.sleep(0.3)
    n = 0
    while (b := r.get_batch(4)) is not None:
        assert len(b) <= 4
        n += len(b)
    r.stop()
    assert n == N_FRAMES and r.snapshot().dropped == 0


def test_reader_loops_and_limits(video):
    r = FrameReader(open_source(str(video)), queue_size=3, loop=True, limit=75).start()
    n = 0
    while (b := r.get_batch(8)) is not None:
        n += len(b)
    r.stop()
    assert n == 75 and r.snapshot().loops == 2


def test_lost_live_source_in_the_loop_writes_stats(tmp_path, monkeypatch):
    import rtseg.live.loop as stream_mod

    monkeypatch.setattr(stream_mod, "open_source", lambda spec: LiveFake(12))
    js = tmp_path / "s.json"
    s = run_stream(StreamConfig(source="rtsp://fake", headless=True, quiet=True, json=str(js),
                                reconnect_delay=0.01), segmenter=FakeSeg()).stats
    assert s["source_lost"] and s["frames_read"] == 12
    assert s["frames_processed"] + s["frames_dropped"] == 12
    assert json.loads(js.read_text())["source_lost"] is True


# --- overlay and stats -----------------------------------------------------------------------
def test_overlay_only_touches_the_mask_region():
    frame = np.full((120, 160, 3), 100, np.uint8)
    mask = np.zeros((16, 16), np.uint8)
    mask[8:12, 8:12] = 1  # -> rows 60:90, cols 80:120 of the frame
    ov = Overlay(alpha=0.5, contour=False)
    out = ov.draw(frame.copy(), mask)
    assert out.shape == frame.shape and out.dtype == np.uint8
    inside = out[65:85, 85:115]
    assert np.all(inside[..., 1] > 100) and np.all(inside[..., 0] < 100)  # green blended in
    untouched = np.ones(frame.shape[:2], bool)
    untouched[60:90, 80:120] = False
    np.testing.assert_array_equal(out[untouched], frame[untouched])
    # with the contour, the text and a heat map: still a frame of the same shape
    ov2 = Overlay(alpha=0.4, heatmap=True, labels=["SYNTHETIC DEMO"], warning="UNTRAINED")
    cam = np.random.default_rng(0).random((16, 16)).astype(np.float32)
    out2 = ov2.draw(frame.copy(), mask, cam, prob=0.9, fps=12.3)
    assert out2.shape == frame.shape and not np.array_equal(out2, frame)
    assert np.array_equal(ov2.draw(frame.copy(), np.zeros((16, 16), np.uint8)).shape, frame.shape)


def test_overlay_blends_exactly_the_mask_pixels_of_its_box():
    """A round mask: inside its bounding box, only the mask's own pixels change, to the
    alpha blend of the frame and the mask colour."""
    import cv2

    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    mask = np.zeros((90, 120), np.uint8)
    cv2.circle(mask, (60, 45), 25, 1, -1)
    out = Overlay(alpha=0.4, contour=False).draw(frame.copy(), mask)
    solid = np.empty_like(frame)
    solid[:] = (0, 255, 0)
    want = np.where(mask[..., None].astype(bool), cv2.addWeighted(frame, 0.6, solid, 0.4, 0.0), frame)
    np.testing.assert_array_equal(out, want)


def test_stats_memory_is_bounded_and_table2_consistent():
    st = RunningStats()
    for i in range(20000):
        st.add(0.01 + (i % 100) * 1e-4)
    assert len(st._res) == RESERVOIR and st.count == 20000
    assert abs(st.median - 0.01495) < 1e-3
    t = table2(st)
    assert abs(t["Av-fps"] - 1000.0 / t["Av-time"]) < 1e-9
    assert abs(t["Ma-fps"] - 1000.0 / t["Mi-time"]) < 1e-9
    ss = StreamStats()
    ss.add_frames(0.5, 5)  # a batch of 5 frames in 0.5 s
    assert ss.frames == 5 and abs(ss.table2()["Av-fps"] - 10.0) < 1e-9
    assert ss.window()["frames"] == 5 and ss.window()["frames"] == 0
