"""Nothing lost: a full disk, an output that names an input, a stopped rerun, stale temporary
files. Each case runs the command the way a user does (in-process CLI) and checks the one
error line, the exit code and that what was there before is still there.

A full disk is simulated: Python writes go to /dev/full (the kernel's ENOSPC), OpenCV's silent
failures are a writer that writes nothing useful, and the free-space probe reports 0 bytes.
"""

from __future__ import annotations

import builtins
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import count_frames, run_cli

import rtseg.atomic
from rtseg.synthetic import make_dataset, write_video

N_FRAMES = 12
SIZE = (48, 64)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    p = tmp_path_factory.mktemp("vid") / "clip.mp4"
    write_video(p, n=N_FRAMES, size=SIZE)
    return p


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """images/ (6 generated images) and masks/ of the same names."""
    root = tmp_path_factory.mktemp("imgs")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    for i, s in enumerate(make_dataset(3, 3, size=(64, 64), seed=3)):
        cv2.imwrite(str(root / "images" / f"{i}.png"), cv2.cvtColor(s.image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / "masks" / f"{i}.png"), s.mask.astype(np.uint8) * 255)
    return root


def one_error_line(err: str, *words: str) -> str:
    lines = [ln for ln in err.strip().splitlines()
             if ln.strip() and not ln.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".tmp." in p.name)


def full_disk(monkeypatch) -> None:
    """Every temporary file rtseg.atomic opens is /dev/full; the disk reports 0 bytes free."""
    real_open = builtins.open

    def to_dev_full(path, mode="r", *args, **kwargs):
        if "w" in mode and ".tmp." in os.path.basename(str(path)):
            return real_open("/dev/full", mode, *args, **kwargs)
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(rtseg.atomic, "open", to_dev_full, raising=False)
    monkeypatch.setattr(rtseg.atomic, "free_bytes", lambda folder: 0)
    monkeypatch.setattr("rtseg.live.display.free_bytes", lambda folder: 0)
    monkeypatch.setattr(rtseg.atomic, "check_free_space", lambda path, need: None)


class MuteWriter:
    """What cv2.VideoWriter does on a full disk: opens, takes every frame, writes garbage."""

    def __init__(self, path, *args) -> None:
        self.path = path
        Path(path).write_bytes(b"\0" * 64)

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        return True

    def write(self, img) -> None:
        pass

    def release(self) -> None:
        pass


# --- a full disk ------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["space probe", "silent writer"])
def test_stream_save_on_a_full_disk_keeps_the_earlier_video(bundle_dir, video, tmp_path, capsys,
                                                            monkeypatch, how):
    args = ["stream", "--source", video, "--model", bundle_dir, "--backend", "torch",
            "--headless", "--save", tmp_path / "v.mp4", "--json", tmp_path / "v.json"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    before = (tmp_path / "v.mp4").read_bytes(), (tmp_path / "v.json").read_bytes()
    if how == "space probe":
        monkeypatch.setattr("rtseg.live.display.free_bytes", lambda folder: 0)
        monkeypatch.setattr(rtseg.atomic, "free_bytes", lambda folder: 0)
    else:
        monkeypatch.setattr("rtseg.live.display.cv2.VideoWriter", MuteWriter)
        monkeypatch.setattr(rtseg.atomic, "free_bytes", lambda folder: 0)
    code, _, err = run_cli(args, capsys)
    assert code == 2
    one_error_line(err, "no space left on device writing", "v.mp4")
    assert (tmp_path / "v.mp4").read_bytes() == before[0]
    assert (tmp_path / "v.json").read_bytes() == before[1]
    assert count_frames(tmp_path / "v.mp4") == N_FRAMES
    assert temp_files(tmp_path) == []


def test_a_video_that_does_not_decode_is_not_saved(bundle_dir, video, tmp_path, capsys,
                                                   monkeypatch):
    """Not the disk: OpenCV wrote nothing playable. Said so, and nothing under the name."""
    monkeypatch.setattr("rtseg.live.display.cv2.VideoWriter", MuteWriter)
    code, _, err = run_cli(["stream", "--source", video, "--model", bundle_dir, "--backend",
                            "torch", "--headless", "--save", tmp_path / "v.mp4"], capsys)
    assert code == 2
    one_error_line(err, "does not decode", "v.mp4")
    assert not (tmp_path / "v.mp4").exists() and temp_files(tmp_path) == []


def test_json_and_csv_on_a_full_disk(bundle_dir, video, images, tmp_path, capsys, monkeypatch):
    (tmp_path / "f.csv").write_text("earlier\n")
    full_disk(monkeypatch)
    code, _, err = run_cli(["features", images / "images", "--out", tmp_path / "f.csv",
                            "--no-cache"], capsys)
    assert code == 2
    one_error_line(err, "no space left on device writing", "f.csv")
    assert (tmp_path / "f.csv").read_text() == "earlier\n"
    code, _, err = run_cli(["stream", "--source", video, "--model", bundle_dir, "--backend",
                            "torch", "--headless", "--json", tmp_path / "s.json"], capsys)
    assert code == 2
    one_error_line(err, "no space left on device writing", "s.json")
    assert temp_files(tmp_path) == [] and not (tmp_path / "s.json").exists()


def test_predict_on_a_full_disk_keeps_the_rows_of_its_masks(bundle_dir, images, tmp_path,
                                                            capsys, monkeypatch):
    """The disk fills after 3 masks: the cause named is the disk (not "use a .png file
    name"), and the masks finished before are listed in predictions.csv."""
    real_open = builtins.open
    masks = []

    def fills_up(path, mode="r", *args, **kwargs):
        name = os.path.basename(str(path))
        if "w" in mode and name.startswith(".") and ".png.tmp." in name:
            masks.append(name)
            if len(masks) > 3:
                return real_open("/dev/full", mode, *args, **kwargs)
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(rtseg.atomic, "open", fills_up, raising=False)
    out = tmp_path / "pred"
    code, _, err = run_cli(["predict", "--model", bundle_dir, "--images", images / "images",
                            "--out", out, "--batch", "2"], capsys)
    assert code == 2
    one_error_line(err, "no space left on device writing", "3.png")
    with open(out / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 == len(list(out.glob("*.png")))
    full_disk(monkeypatch)
    code, _, err = run_cli(["eval", "--model", bundle_dir, "--images", images / "images",
                            "--masks", images / "masks", "--figure", tmp_path / "fig.png"], capsys)
    assert code == 2
    one_error_line(err, "no space left on device writing", "fig.png")
    assert not (tmp_path / "fig.png").exists() and temp_files(tmp_path) == []


# --- outputs that are inputs ------------------------------------------------------------------
def test_outputs_that_name_an_input_are_refused(video, images, tmp_path, capsys):
    src = tmp_path / "in.mp4"
    src.write_bytes(video.read_bytes())
    (tmp_path / "link.mp4").symlink_to(src)
    img = tmp_path / "img.png"
    img.write_bytes((images / "images" / "0.png").read_bytes())
    truth = tmp_path / "t.csv"
    truth.write_text("path,label\nimages/0.png,polyp\n")
    mask = images / "masks" / "1.png"
    kept = {p: p.read_bytes() for p in (src, img, truth, mask)}
    cases = [
        (["stream", "--source", src, "--save", tmp_path / "link.mp4", "--headless"], "--save"),
        (["stream", "--source", src, "--json", src, "--headless"], "--json"),
        (["bench", "--source", src, "--json", src], "--json"),
        (["features", img, "--out", img], "--out"),
        (["propagate", "--labeled", tmp_path / "seeds", "--unlabeled", images / "images",
          "--truth", truth, "--out", truth], "--out"),
        (["eval", "--images", images / "images", "--masks", images / "masks",
          "--figure", mask], "--figure"),
    ]
    for args, option in cases:
        code, _, err = run_cli(args, capsys)
        assert code == 2, (args, err)
        one_error_line(err, option)
    assert {p: p.read_bytes() for p in kept} == kept


def test_refuse_inputs_sees_hard_links_and_new_images_in_input_folders(tmp_path):
    from rtseg.atomic import refuse_inputs
    from rtseg.errors import UserError

    a = tmp_path / "a.csv"
    a.write_text("x")
    os.link(a, tmp_path / "hard.csv")
    with pytest.raises(UserError, match="is the input"):
        refuse_inputs(tmp_path / "hard.csv", "--out", a)
    with pytest.raises(UserError, match="inside the input folder"):
        refuse_inputs(tmp_path / "new.png", "--figure", tmp_path, folder_kinds=(".png",))
    refuse_inputs(tmp_path / "scores.json", "--json", tmp_path, folder_kinds=(".png",))
    refuse_inputs(tmp_path / "b.csv", "--out", a)


# --- a stopped rerun --------------------------------------------------------------------------
def test_a_stopped_predict_rerun_keeps_every_row(calibrated_bundle, images, tmp_path):
    from rtseg.evaluate.predict import predict_folder

    out = tmp_path / "pred"
    full = predict_folder(calibrated_bundle, images / "images", out, batch_size=2)
    assert full.n_images == 6
    rows_before = (out / "predictions.csv").read_text()
    done = []
    again = predict_folder(calibrated_bundle, images / "images", out, batch_size=2,
                           progress=done.append, stop=lambda: len(done) >= 2)
    assert again.interrupted and again.n_images == 2
    with open(out / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6 and again.n_csv_rows == 6
    assert (out / "predictions.csv").read_text() == rows_before  # same images, same values


# --- stale temporary files --------------------------------------------------------------------
def test_temporary_files_of_a_killed_run_are_removed_by_the_next_write(tmp_path):
    from rtseg.atomic import _host, _swept, write_text

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = tmp_path / f".v.mp4.tmp.{dead}@{_host()}.abc123.mp4"
    alive = tmp_path / f".v.mp4.tmp.{os.getppid()}@{_host()}.abc123.mp4"
    other_host = tmp_path / f".v.mp4.tmp.{dead}@elsewhere.abc123.mp4"
    for p in (stale, alive, other_host):
        p.write_bytes(b"x" * 10)
    _swept.discard(str(tmp_path))
    write_text(tmp_path / "v.json", "{}")
    assert not stale.exists() and alive.exists() and other_host.exists()
    assert json.loads((tmp_path / "v.json").read_text()) == {}


def test_a_folder_written_as_a_whole_replaces_the_old_one_only_when_complete(tmp_path):
    """rtseg.atomic.atomic_dir (a model bundle): a failed block leaves the old folder exactly as it
    was; a finished one replaces it, keeping the old files it did not write (a model card)."""
    import errno

    from rtseg.atomic import _host, _swept, atomic_dir
    from rtseg.errors import UserError

    out = tmp_path / "model"
    out.mkdir()
    for name, text in (("weights.pt", "old weights"), ("manifest.json", "old manifest"), ("MODEL_CARD.md", "card")):
        (out / name).write_text(text)
    with pytest.raises(UserError, match=f"no space left on device writing {out}"):
        with atomic_dir(out) as tmp:
            (tmp / "weights.pt").write_text("new weights")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert {p.name: p.read_text() for p in out.iterdir()} == {
        "weights.pt": "old weights", "manifest.json": "old manifest", "MODEL_CARD.md": "card"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary folder left
    with atomic_dir(out) as tmp:
        (tmp / "weights.pt").write_text("new weights")
        (tmp / "manifest.json").write_text("new manifest")
    assert {p.name: p.read_text() for p in out.iterdir()} == {
        "weights.pt": "new weights", "manifest.json": "new manifest", "MODEL_CARD.md": "card"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    # the unfinished folder of a killed run is removed by the next write beside it
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = tmp_path / f".model.tmp.{dead}@{_host()}.abc123"
    (stale / "sub").mkdir(parents=True)
    (stale / "weights.pt").write_text("half")
    _swept.discard(str(tmp_path))
    with atomic_dir(tmp_path / "other") as tmp:
        (tmp / "x").write_text("x")
    assert not stale.exists() and (tmp_path / "other" / "x").read_text() == "x"
    assert oct((tmp_path / "other").stat().st_mode & 0o777) == oct(0o777 & ~rtseg.atomic.current_umask())


def test_a_stopped_run_rerun_leaves_no_stale_scores(tmp_path, capsys, monkeypatch):
    """The rerun replaces labels.csv first; stopped there, the earlier metrics.json and
    figure.png must not stay beside labels they do not describe."""
    import rtseg.recipes.presets as presets

    out = tmp_path / "run"
    out.mkdir()
    for name in ("labels.csv", "metrics.json", "figure.png", "run.json"):
        (out / name).write_text("earlier run")

    def stopped(cfg, split):
        (cfg.out / "labels.csv").write_text("this run")
        raise KeyboardInterrupt

    monkeypatch.setattr(presets, "open_data", lambda data: None)
    monkeypatch.setattr(presets, "holdout_split", lambda *a: None)
    monkeypatch.setattr(presets, "run_preset", stopped)
    code, _, err = run_cli(["run", "--preset", "run3", "--data", tmp_path, "--out", out], capsys)
    assert code == 130, err
    assert sorted(p.name for p in out.iterdir()) == ["labels.csv"]
