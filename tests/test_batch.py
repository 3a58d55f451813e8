"""rtseg batch (Ray Data): outputs, identity with rtseg stream, resume after SIGKILL, failures,
bad input; rtseg features --workers (same features and cache as one process).

One local Ray of 2 CPUs for the whole module (Ray starts slowly on 2 cores); the SIGKILL test
starts one more in its own process. Skipped, with the reason, where Ray cannot start.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import run_cli

from rtseg.synthetic import make_dataset, write_video

N_FRAMES = 20
SIZE = (64, 96)  # (H, W)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ray_up():
    """A local Ray with 2 CPUs for the module (run_batch and RayMapper join it)."""
    try:
        from rtseg.batch.raysession import ray_session

        cm = ray_session(2)
        cm.__enter__()
    except Exception as exc:  # noqa: BLE001 - no Ray here: skip with the reason
        pytest.skip(f"Ray cannot start here: {str(exc).splitlines()[0] if str(exc) else exc!r}")
    yield
    cm.__exit__(None, None, None)
    import ray

    ray.shutdown()


@pytest.fixture(scope="module")
def model(calibrated_bundle, onnx_cache):
    """The calibrated test bundle's fused graph, exported once per session (shared cache):
    ``--model file.onnx`` (a bundle is exported to the same graph by the driver)."""
    from rtseg.graph.onnx import cached_onnx

    return cached_onnx(calibrated_bundle, 14, cache=onnx_cache)


@pytest.fixture(scope="module")
def cache_env(tmp_path_factory):
    """The session's ONNX export cache, for this module's drivers (and child processes)."""
    old = os.environ.get("RTSEG_CACHE")
    path = tmp_path_factory.getbasetemp() / "rtseg-cache"
    os.environ["RTSEG_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("RTSEG_CACHE", None)
    else:
        os.environ["RTSEG_CACHE"] = old


def _write_images(folder: Path, n: int, seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, s in enumerate(make_dataset((n + 1) // 2, n // 2, size=(72, 88), seed=seed)):
        cv2.imwrite(str(folder / f"img{i}.png"), cv2.cvtColor(s.image, cv2.COLOR_RGB2BGR))


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """3 clips, one cut-off mp4, 5 stills + one broken file, one ignored text file."""
    root = tmp_path_factory.mktemp("arch") / "archive"
    (root / "day1").mkdir(parents=True)
    for i in range(3):
        write_video(root / "day1" / f"clip{i}.mp4", n=N_FRAMES, size=SIZE, seed=i)
    data = (root / "day1" / "clip0.mp4").read_bytes()
    (root / "day1" / "cut.mp4").write_bytes(data[: len(data) // 2])
    _write_images(root / "stills", 5)
    (root / "stills" / "broken.png").write_bytes(b"not a png")
    (root / "notes.txt").write_text("ignored")
    return root


@pytest.fixture(scope="module")
def batch_run(ray_up, cache_env, archive, model, tmp_path_factory):
    from rtseg.batch import BatchConfig, run_batch

    out = tmp_path_factory.mktemp("batch") / "out"
    cfg = BatchConfig(input=str(archive), out=str(out), model=str(model), workers=2,
                      save_video=True, save_masks=True, chunk=3, quiet=True)
    t0 = time.perf_counter()
    manifest = run_batch(cfg)
    return {"out": out, "manifest": manifest, "cfg": cfg, "seconds": time.perf_counter() - t0}


def _table(path: Path):
    import pyarrow.parquet as pq

    return pq.read_table(str(path)).to_pydict()


def _no_partial_files(out: Path) -> None:
    """Nothing half-written: no staging folder, no temporary file of rtseg.atomic anywhere."""
    assert not (out / ".work").exists()
    leftovers = [p for p in out.rglob("*") if ".tmp." in p.name]
    assert not leftovers, leftovers


# --- outputs, failures, manifest, resume ---------------------------------------------------
def test_archive_outputs_and_manifest(batch_run, archive):
    out, m = batch_run["out"], batch_run["manifest"]
    assert m["complete"] and m["ray"]["workers"] == 2
    t = m["totals"]
    assert t["files"] == 10 and t["ignored_files"] == 1
    assert t["files_done"] == t["files_this_run"] == 8  # 3 clips + 5 stills
    assert t["frames_this_run"] == 3 * N_FRAMES + 5 and t["frames_per_s"] > 0
    failed = {Path(f["source"]).name: f["reason"] for f in m["failed"]}
    assert set(failed) == {"cut.mp4", "broken.png"}
    assert "cannot open video file" in failed["cut.mp4"] and "\n" not in failed["cut.mp4"]
    assert failed["broken.png"] == "not a readable image"
    videos = [d for d in m["done"] if d["kind"] == "video"]
    assert sorted(Path(d["source"]).name for d in videos) == ["clip0.mp4", "clip1.mp4", "clip2.mp4"]
    for d in videos:
        vdir = out / d["output"]
        assert d["output"] == f"videos/archive/day1/{Path(d['source']).name}"
        assert json.loads((vdir / "done.json").read_text())["status"] == "done"
        tab = _table(vdir / "frames.parquet")
        assert tab["frame"] == list(range(N_FRAMES))
        np.testing.assert_allclose(tab["time_s"], np.arange(N_FRAMES) / 25.0)
        assert all(0.0 <= p <= 1.0 for p in tab["prob"])
        assert len(list((vdir / "masks").glob("*.png"))) == N_FRAMES
        cap = cv2.VideoCapture(str(vdir / "overlay.mp4"))
        n = 0
        while cap.read()[0]:
            n += 1
        assert n == N_FRAMES
        for px, area, x, y, w, h in zip(tab["mask_pixels"], tab["mask_area"], tab["bbox_x"],
                                        tab["bbox_y"], tab["bbox_w"], tab["bbox_h"]):
            assert abs(area - px / (SIZE[0] * SIZE[1])) < 1e-6
            assert (px == 0) == (w == -1) and (px == 0 or 0 < w * h)
    (stills,) = [d for d in m["done"] if d["kind"] == "images"]
    sdir = out / stills["output"]
    assert stills["images"] == 5 and stills["unreadable_images"] == 1
    tab = _table(sdir / "images.parquet")
    assert tab["mask"] == [f"img{i}.png" for i in range(5)]  # natural order across 2 chunks
    for name, w, h, px in zip(tab["mask"], tab["width"], tab["height"], tab["mask_pixels"]):
        mk = cv2.imread(str(sdir / "masks" / name), cv2.IMREAD_UNCHANGED)
        assert mk.shape == (h, w) == (72, 88) and int((mk > 0).sum()) == px
    _no_partial_files(out)
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["totals"] == m["totals"]


def test_rerun_skips_everything_done(batch_run):
    from rtseg.batch import run_batch

    before = {p: p.stat().st_mtime_ns for p in batch_run["out"].rglob("frames.parquet")}
    m = run_batch(batch_run["cfg"])
    t = m["totals"]
    assert t["files_this_run"] == 0 and t["files_already_done"] == 8 and t["frames_this_run"] == 0
    assert not m["ray"]  # nothing to do: Ray was not even asked
    # the unchanged bad files are still reported, not retried
    assert sorted(Path(f["source"]).name for f in m["failed"]) == ["broken.png", "cut.mp4"]
    assert before == {p: p.stat().st_mtime_ns for p in batch_run["out"].rglob("frames.parquet")}


def test_per_frame_outputs_identical_to_stream(batch_run, archive, model, monkeypatch):
    """The probabilities and masks of rtseg stream on the same video, frame by frame."""
    from rtseg.live.overlay import Overlay
    from rtseg.live.loop import StreamConfig, run_stream

    drawn = []
    orig = Overlay.draw

    def spy(self, frame, mask, cam=None, prob=None, fps=None, **kw):
        h, w = frame.shape[:2]
        drawn.append((prob, self.resize_mask(mask, h, w, **kw).copy()))
        return orig(self, frame, mask, cam, prob, fps, **kw)

    monkeypatch.setattr(Overlay, "draw", spy)
    video = archive / "day1" / "clip1.mp4"
    run_stream(StreamConfig(source=str(video), model=str(model), backend="onnxruntime",
                            threads=1, headless=True, quiet=True))
    vdir = batch_run["out"] / "videos" / "archive" / "day1" / "clip1.mp4"
    tab = _table(vdir / "frames.parquet")
    assert len(drawn) == N_FRAMES == len(tab["prob"])
    assert [np.float32(p) for p, _ in drawn] == [np.float32(p) for p in tab["prob"]]
    for i, (_, m) in enumerate(drawn):
        png = cv2.imread(str(vdir / "masks" / f"{i:06d}.png"), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(png > 0, m > 0)
        assert int(m.sum()) == tab["mask_pixels"][i]


def test_sigkill_mid_archive_then_rerun(ray_up, cache_env, model, tmp_path):
    """Kill the job (SIGKILL) mid-archive and rerun: every video complete exactly once.

    The job runs in a child process on this module's Ray (``--address``: one Ray start less,
    and the cluster path is tested too)."""
    import ray

    from rtseg.batch import BatchConfig, run_batch

    arch = tmp_path / "arch"
    arch.mkdir()
    n_videos, n_frames = 8, 60
    for i in range(n_videos):
        write_video(arch / f"v{i}.mp4", n=n_frames, size=SIZE, seed=i)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "rtseg", "batch", "--input", str(arch), "--out", str(out),
           "--model", str(model), "--workers", "2",
           "--address", ray.get_runtime_context().gcs_address]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True, env={**os.environ, "COLUMNS": "120"})
    vdir = out / "videos" / "arch"
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if vdir.is_dir() and any((d / "done.json").exists() for d in vdir.iterdir()):
                break
            time.sleep(0.01)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    time.sleep(1.0)  # the killed job's actors go with it (a unit they still finish is complete)
    done_before = sorted(d.name for d in vdir.iterdir() if (d / "done.json").exists())
    assert 0 < len(done_before) < n_videos
    for d in vdir.iterdir():  # what is in place is complete; partial work only in .work
        assert (d / "done.json").exists()
        assert _table(d / "frames.parquet")["frame"] == list(range(n_frames))

    m = run_batch(BatchConfig(input=str(arch), out=str(out), model=str(model), workers=2,
                              quiet=True))
    t = m["totals"]
    assert m["complete"] and t["failed"] == 0 and t["files_done"] == n_videos
    assert t["files_already_done"] >= len(done_before)
    assert t["files_this_run"] == n_videos - t["files_already_done"] > 0
    assert sorted(d.name for d in vdir.iterdir()) == [f"v{i}.mp4" for i in range(n_videos)]
    for d in vdir.iterdir():
        assert sorted(p.name for p in d.iterdir()) == ["done.json", "frames.parquet"]
        assert _table(d / "frames.parquet")["frame"] == list(range(n_frames))
    assert sorted(Path(x["source"]).name for x in m["done"]) == sorted(
        f"v{i}.mp4" for i in range(n_videos))
    _no_partial_files(out)


# --- bad input: one error line, exit 2, no Ray ----------------------------------------------
def test_bad_input_is_one_error_line(archive, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    cases = [
        (["--input", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], "input not found"),
        (["--input", str(empty), "--out", str(tmp_path / "o")], "no video or image file"),
        (["--input", str(tmp_path / "nope" / "*.mp4"), "--out", str(tmp_path / "o")], "no file matches"),
        (["--input", str(archive), "--out", str(blocker / "o")], "cannot create output folder"),
        (["--input", str(archive), "--out", str(tmp_path / "o"), "--address", "nohost"], "--address must be"),
        (["--input", str(archive), "--out", str(tmp_path / "o"), "--address", "ray://127.0.0.1:1"],
         "cannot reach a Ray cluster"),
        (["--input", str(archive), "--out", str(tmp_path / "o"), "--workers", "0"], "--workers"),
        (["--input", str(archive), "--out", str(tmp_path / "o"), "--table", "xls"], "--table"),
    ]
    for args, expect in cases:
        code, _, err = run_cli(["batch", *args], capsys)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (args, err)
        assert expect in lines[0], (args, err)


def test_inputs_keys_and_glob(archive):
    from rtseg.batch.inputs import discover, key_of, mask_names

    inp = discover(str(archive))
    assert [key_of(v, inp.root) for v in inp.videos] == [
        "archive/day1/clip0.mp4", "archive/day1/clip1.mp4", "archive/day1/clip2.mp4",
        "archive/day1/cut.mp4"]
    g = discover(str(archive / "day1" / "clip*.mp4"))
    assert [key_of(v, g.root) for v in g.videos] == [
        "day1/clip0.mp4", "day1/clip1.mp4", "day1/clip2.mp4"]
    assert mask_names([Path("a/x.jpg"), Path("a/x.png"), Path("a/y.png")]) == [
        "x.png", "x.png.png", "y.png"]


def test_help_is_fast_and_has_examples(capsys):
    code, out, _ = run_cli(["batch", "--help"], capsys)
    assert code == 0 and "Example" in out and "rtseg batch --input" in out
    r = subprocess.run([sys.executable, "-c", "import sys, rtseg.cli; print('ray' in sys.modules)"],
                       capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "False", r.stderr


# --- features on Ray --------------------------------------------------------------------------
def test_features_workers_same_csv_and_cache(ray_up, tmp_path, capsys, monkeypatch):
    imgs = tmp_path / "imgs"
    _write_images(imgs, 6, seed=3)
    (imgs / "bad.jpg").write_bytes(b"junk")
    res = {}
    for name, extra in (("threads", []), ("ray", ["--workers", "2"])):
        monkeypatch.setenv("RTSEG_CACHE_DIR", str(tmp_path / f"cache-{name}"))
        code, _, err = run_cli(["features", str(imgs), "--out", str(tmp_path / f"{name}.csv"),
                                *extra], capsys)
        assert code == 0, err
        res[name] = (tmp_path / f"{name}.csv").read_text()
    assert res["ray"] == res["threads"] and res["ray"].count("\n") == 7  # header + 6 images
    with np.load(tmp_path / "cache-threads" / "features.npz") as a, \
            np.load(tmp_path / "cache-ray" / "features.npz") as b:
        assert bytes(a["paths"]) == bytes(b["paths"])
        np.testing.assert_array_equal(a["features"], b["features"])
    code, _, err = run_cli(["features", str(imgs), "--out", str(tmp_path / "x.csv"),
                            "--address", "bogus"], capsys)
    assert code == 2 and err.startswith("error: --address")


# --- one unit without Ray ---------------------------------------------------------------------
def test_unit_csv_table_and_failed_unit_without_ray(archive, tmp_path):
    """process_unit on its own: a CSV table published with its done-marker; a cut video fails
    with bad_input (not retried while unchanged) and leaves no folder behind."""
    from rtseg.batch.inputs import discover, plan_units
    from rtseg.batch.work import UnitContext, process_unit
    from rtseg.model.manifest import Manifest
    from rtseg.runtime.base import Segmenter, SegOutput
    from rtseg.model.thresholds import ThresholdPolicy

    class Grey(Segmenter):
        name = "grey"

        def __init__(self):
            self.manifest = Manifest(input_size=16, threshold=ThresholdPolicy("above", 0.5))

        def __call__(self, frames):
            cam = np.stack([cv2.resize(cv2.cvtColor(f, cv2.COLOR_BGR2GRAY), (16, 16))
                            for f in frames]).astype(np.float32) / 255.0
            return SegOutput(cam.mean(axis=(1, 2)), cam, (cam > 0.5).astype(np.uint8))

    out = tmp_path / "out"
    units = {Path(u["source"]).name: u for u in
             plan_units(discover(str(archive / "day1")), out, "sig", 4)}
    seen = []
    ctx = UnitContext(Grey(), {"table": "csv", "batch": 4}, report=seen.append)
    r = process_unit(units["clip2.mp4"], ctx)
    assert r["status"] == "done" and r["frames"] == N_FRAMES and sum(seen) == N_FRAMES
    final = Path(units["clip2.mp4"]["final"])
    assert sorted(p.name for p in final.iterdir()) == ["done.json", "frames.csv"]
    lines = (final / "frames.csv").read_text().splitlines()
    assert lines[0] == "frame,time_s,prob,mask_pixels,mask_area,bbox_x,bbox_y,bbox_w,bbox_h"
    assert len(lines) == N_FRAMES + 1 and lines[1].startswith("0,0.0,")
    bad = process_unit(units["cut.mp4"], ctx)
    assert bad["status"] == "failed" and bad["bad_input"] and "cannot open" in bad["reason"]
    assert not Path(units["cut.mp4"]["final"]).exists()
    assert not list((out / ".work").iterdir())


# --- exit codes, leftovers, a stopped run's manifest ------------------------------------------
def test_a_run_with_failed_files_exits_1(batch_run, archive, model, capsys):
    """The help's rule: 1 = finished with failures (here the rerun: the two bad files are known
    failures, everything else is done), with one error line saying where the reasons are."""
    out = batch_run["out"]
    code, _, err = run_cli(["batch", "--input", archive, "--out", out, "--model", model,
                            "--workers", "2", "--save-video", "--save-masks", "--chunk", "3"],
                           capsys)
    assert code == 1, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert lines == [f"error: 2 of 10 file(s) failed; the reasons are in {out}/manifest.json "
                     "under failed"]
    code, out_text, _ = run_cli(["batch", "--help"], capsys)
    assert "1 = the run finished but some files failed" in " ".join(out_text.split())


def test_a_batch_that_fails_at_once_leaves_no_folder(archive, tmp_path, capsys):
    out = tmp_path / "new" / "out"
    code, _, err = run_cli(["batch", "--input", archive, "--out", out, "--model",
                            tmp_path / "no-model"], capsys)
    assert code == 2 and err.startswith("error: "), err
    assert not (tmp_path / "new").exists()


def test_workers_above_the_cores_are_capped_with_a_warning():
    from rtseg.batch.run import cpu_cores
    from rtseg.cli.batching import _cap_workers

    with pytest.warns(UserWarning, match="--workers 64 is more than"):
        assert _cap_workers(64, 1, None) == cpu_cores()
    assert _cap_workers(1, 1, None) == 1 and _cap_workers(64, 1, "auto") == 64


def test_a_stopped_run_counts_the_units_finished_on_disk(archive, tmp_path):
    """SIGTERM may stop the driver between a unit's done-marker and its result: the manifest
    written on the way out counts what is on disk."""
    from rtseg.batch.inputs import discover, plan_units
    from rtseg.batch.state import RunState

    out = tmp_path / "out"
    units = plan_units(discover(str(archive / "day1")), out, "sig", 4)
    final = Path(units[0]["final"])
    final.mkdir(parents=True)
    (final / "done.json").write_text(json.dumps({"id": units[0]["id"], "status": "done",
                                                 "signature": units[0]["signature"],
                                                 "frames": 5}))
    state = RunState(None, out, {}, None, units)
    assert state.collect_finished() == 1
    assert state.results[units[0]["id"]]["status"] == "done" and units[0]["id"] in state.this_run
    assert state.collect_finished() == 0


def test_orphaned_ray_agents_are_reaped_but_not_those_of_a_live_raylet(tmp_path):
    """A SIGKILLed driver leaves Ray's dashboard and runtime-env agents behind (parent gone);
    the next local start stops them. An agent whose parent is a raylet stays."""
    from rtseg.batch.raysession import reap_orphaned_agents

    pid_file = tmp_path / "orphan.pid"
    subprocess.run(["bash", "-c", f"(exec -a ray::DashboardAgent sleep 60) & echo $! > {pid_file}"],
                   check=True, timeout=10)
    orphan = int(pid_file.read_text())
    keeper = subprocess.Popen(
        ["raylet", "-c", "import subprocess, time; subprocess.Popen(['bash', '-c', "
         "'exec -a ray::RuntimeEnvAgent sleep 60']); time.sleep(60)"],
        executable=sys.executable, start_new_session=True)
    try:
        deadline = time.time() + 10
        while time.time() < deadline and not _children(keeper.pid):
            time.sleep(0.05)
        kept = _children(keeper.pid)
        assert kept
        reaped = reap_orphaned_agents()
        assert orphan in reaped and not set(kept) & set(reaped)
    finally:
        os.killpg(keeper.pid, signal.SIGKILL)
        keeper.wait(timeout=10)
        with __import__("contextlib").suppress(OSError):
            os.kill(orphan, signal.SIGKILL)


def _children(pid: int) -> list[int]:
    kids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(name))
    return kids


def test_a_batch_prints_no_ray_restart_notice(ray_up, cache_env, archive, model, tmp_path, capfd):
    """Ray's C++ core worker prints one ERROR line per restartable actor pool; rtseg keeps the
    restarts (a crash on one file must not lose the next) and drops that line, nothing else."""
    import os

    from rtseg.batch import BatchConfig, run_batch
    from rtseg.batch.raysession import without_ray_restart_notice

    with without_ray_restart_notice():
        os.write(2, b"[2026-12-06 12:00:00,000 E 1 2] core_worker.cc:123: Actor constructor arguments "
                    b"in the object store and max_restarts > 0\nkept line\n")
    err = capfd.readouterr().err
    assert "kept line" in err and "core_worker" not in err
    cfg = BatchConfig(input=str(archive / "stills"), out=str(tmp_path / "out"), model=str(model), workers=2,
                      quiet=True)
    run_batch(cfg)
    err = capfd.readouterr().err
    assert "core_worker" not in err, err
