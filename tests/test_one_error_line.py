"""Bad input is refused before any work: one ``error:`` line naming what is wrong (the option,
the field and the file, the duplicate row), exit code 2, no traceback, nothing written.

Ends with a small fuzz over manifest fields and option values (seeded ``random``)."""

from __future__ import annotations

import json
import random
import shutil

import cv2
import numpy as np
import pytest
from helpers import run_cli

from rtseg.synthetic import make_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """images/ and masks/ (4 generated images), seeds/{polyp,non_polyp}/."""
    root = tmp_path_factory.mktemp("bad")
    for d in ("images", "masks", "seeds/polyp", "seeds/non_polyp"):
        (root / d).mkdir(parents=True)
    for i, s in enumerate(make_dataset(2, 2, size=(64, 64), seed=7)):
        bgr = cv2.cvtColor(s.image, cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(root / "images" / f"{i}.png"), bgr)
        cv2.imwrite(str(root / "masks" / f"{i}.png"), s.mask.astype(np.uint8) * 255)
        cv2.imwrite(str(root / "seeds" / s.label / f"s{i}.png"), bgr)
    return root


def refused(args, capsys, *words: str, cwd_files=None) -> str:
    code, _, err = run_cli(args, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("warning: ")]
    assert code == 2, (args, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), (args, err)
    assert "Traceback" not in err and "╭" not in err, err
    for w in words:
        assert w in lines[0], (args, lines[0])
    return lines[0]


def snapshot(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# --- duplicates, sizes, counts -------------------------------------------------------------
def test_duplicate_rows_in_labels_and_truth_csvs(data, tmp_path, capsys):
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\n" + "".join(f"{data}/images/{i}.png,{'polyp' if i < 2 else 'non_polyp'}\n"
                                            for i in range(4)) + f"{data}/images/1.png,polyp\n")
    refused(["train", "--labels", csv, "--out", tmp_path / "m", "--epochs", "1"], capsys,
            str(csv), "line 6", "1.png", "listed again", "first on line 3")
    assert not (tmp_path / "m").exists()
    truth = tmp_path / "truth.csv"
    truth.write_text("path,label\na.png,polyp\nb.png,non_polyp\na.png,polyp\n")
    refused(["propagate", "--labeled", data / "seeds", "--unlabeled", data / "images",
             "--truth", truth, "--out", tmp_path / "l.csv", "--clusters", "2"], capsys,
            str(truth), "line 4", "a.png", "first on line 2")
    assert not (tmp_path / "l.csv").exists()


@pytest.mark.parametrize("top", ["0", "-3"])
def test_tune_top_must_be_positive(data, tmp_path, capsys, top):
    refused(["tune", "--model", tmp_path / "none", "--images", data / "images", "--masks",
             data / "masks", "--top", top], capsys, "--top")


def test_sizes_outside_the_manifests_range_are_refused_at_once(data, tmp_path, capsys):
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\n" + "".join(f"{data}/images/{i}.png,{'polyp' if i < 2 else 'non_polyp'}\n"
                                            for i in range(4)))
    refused(["train", "--labels", csv, "--out", tmp_path / "m", "--size", "100000"], capsys,
            "--size must be 32..2048")
    refused(["run", "--preset", "run3", "--data", tmp_path / "nodata", "--out", tmp_path / "r",
             "--size", "0"], capsys, "--size must be 32..2048")
    assert snapshot(tmp_path) == ["labels.csv"]


def test_init_folder_without_weights_says_so(data, tmp_path, capsys):
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\n" + "".join(f"{data}/images/{i}.png,{'polyp' if i < 2 else 'non_polyp'}\n"
                                            for i in range(4)))
    (tmp_path / "initdir").mkdir()
    refused(["train", "--labels", csv, "--out", tmp_path / "m", "--size", "32", "--epochs", "1",
             "--val", "0", "--init", tmp_path / "initdir"], capsys,
            "is a folder without weights.pt")
    assert not (tmp_path / "m").exists()


def test_frames_too_large_for_a_video_blame_the_frame_size(tmp_path):
    from rtseg.errors import UserError
    from rtseg.live.display import VideoSink

    sink = VideoSink(tmp_path / "x.avi", 25.0, "x.avi")
    with pytest.raises(UserError, match="frames of 10000x100 are too large"):
        sink.write(np.zeros((100, 10000, 3), np.uint8))


@pytest.mark.parametrize("args,words", [
    (["predict", "--batch", "0", "--images", "i", "--out", "o"], ("--batch", "rtseg predict --help")),
    (["predict", "--bogus"], ("--bogus",)),
    (["stream", "--max-frames", "x"], ("--max-frames",)),
    (["nosuchcommand"], ("nosuchcommand",)),
])
def test_usage_errors_are_one_line_not_a_panel(args, words, capsys):
    refused(args, capsys, *words)


# --- the manifest: field and file named ---------------------------------------------------
@pytest.mark.parametrize("field,value,words", [
    ("threshold", {"kind": "band", "lo": "high", "hi": 0.7}, ("threshold.lo",)),
    ("threshold", {"kind": "middle"}, ("threshold.kind",)),
    ("head", "yes", ("'head'",)),
    ("arch", "efficientnet-b0", ("cam_layer", "")),
])
def test_manifest_messages_name_the_field_and_the_file(bundle_dir, data, tmp_path, capsys,
                                                      field, value, words):
    bad = tmp_path / "bad"
    shutil.copytree(bundle_dir, bad)
    m = json.loads((bad / "manifest.json").read_text())
    m[field] = value
    if field == "arch":
        m["cam_layer"] = 22  # b0 has 16 blocks
    (bad / "manifest.json").write_text(json.dumps(m))
    line = refused(["predict", "--model", bad, "--images", data / "images", "--out",
                    tmp_path / "o"], capsys, str(bad / "manifest.json"))
    assert words[0] in line or field == "arch", line
    assert not (tmp_path / "o").exists()


# --- fuzz ------------------------------------------------------------------------------------
BAD_VALUES = ["", "x", -1, 0, 1e9, -1e9, float("nan"), True, None, [], [1], {"a": 1}, "224px",
              [1, 2], [0, 0, 0], "-3", "band 2 1"]
FIELDS = ["arch", "input_size", "mean", "std", "cam_layer", "threshold", "class_names",
          "fov_mask", "tiles", "postprocess", "call_smoothing", "head", "training"]


def _is_valid(field, value, good) -> bool:
    """The few random picks that are a valid value of the field (skipped)."""
    valid = {"head": [None], "call_smoothing": [0], "postprocess": [[]], "cam_layer": [0],
             "mean": [[0, 0, 0]], "training": [{"a": 1}]}
    return value == good.get(field) or any(value == v and type(value) is type(v)
                                           for v in valid.get(field, []))


def test_fuzz_manifest_values(bundle_dir, data, tmp_path, capsys):
    rng = random.Random(0)
    good = json.loads((bundle_dir / "manifest.json").read_text())
    n = 0
    while n < 20:
        field, value = rng.choice(FIELDS), rng.choice(BAD_VALUES)
        if _is_valid(field, value, good):
            continue
        bad = tmp_path / f"b{n}"
        shutil.copytree(bundle_dir, bad)
        (bad / "manifest.json").write_text(json.dumps({**good, field: value}))
        before = snapshot(tmp_path)
        line = refused(["predict", "--model", bad, "--images", data / "images", "--out",
                        tmp_path / "o"], capsys, str(bad))
        assert snapshot(tmp_path) == before, (field, value, line)
        n += 1


OPTIONS = {  # command -> (required arguments, [(option, bad values)])
    "stream": (["--source", "{video}", "--headless", "--json", "{out}/s.json"],
               [("--alpha", ["-0.1", "1.5", "nan"]), ("--smooth", ["1", "-1"]),
                ("--batch", ["0", "-2"]), ("--threads", ["-1"]), ("--call-smoothing", ["0.9", "-1"]),
                ("--max-frames", ["-1", "0"]), ("--layer", ["99", "x"])]),
    "predict": (["--images", "{images}", "--out", "{out}/p"],
                [("--batch", ["0", "-1"]), ("--threshold", ["band 2 1", "above", "x"]),
                 ("--layer", ["-5", "x"])]),
    "eval": (["--images", "{images}", "--masks", "{masks}", "--json", "{out}/e.json"],
             [("--reduction", ["mean", ""]), ("--figure-rows", ["0"]), ("--batch", ["0"])]),
    "batch": (["--input", "{images}", "--out", "{out}/b"],
              [("--chunk", ["0"]), ("--table", ["xls"]), ("--batch", ["0", "1000"]),
               ("--alpha", ["2"]), ("--smooth", ["1"]), ("--workers", ["0", "-1"])]),
    "train": (["--labels", "{labels}", "--out", "{out}/m"],
              [("--epochs", ["0"]), ("--lr", ["-1", "nan"]), ("--val", ["-1"]),
               ("--size", ["0", "100000"]), ("--batch", ["0"]), ("--arch", ["resnet"])]),
    "propagate": (["--labeled", "{seeds}", "--unlabeled", "{images}", "--out", "{out}/l.csv"],
                  [("--purity", ["0.2", "2"]), ("--clusters", ["0"]), ("--target", ["0"]),
                   ("--scale", ["log"]), ("--tile-min-fraction", ["1", "-1"])]),
    "tune": (["--model", "{model}", "--images", "{images}", "--masks", "{masks}"],
             [("--top", ["0", "-3"]), ("--layers", ["99", "x"])]),
}


def test_fuzz_option_values(bundle_dir, data, tmp_path, capsys):
    from rtseg.synthetic import write_video

    video = tmp_path / "in" / "clip.mp4"
    video.parent.mkdir()
    write_video(video, n=4, size=(48, 64))
    labels = tmp_path / "in" / "labels.csv"
    labels.write_text("path,label\n" + "".join(
        f"{data}/images/{i}.png,{'polyp' if i < 2 else 'non_polyp'}\n" for i in range(4)))
    out = tmp_path / "out"
    fill = {"video": video, "images": data / "images", "masks": data / "masks",
            "seeds": data / "seeds", "labels": labels, "model": bundle_dir, "out": out}
    rng = random.Random(1)
    cases = [(cmd, opt, v) for cmd, (_, opts) in OPTIONS.items() for opt, vals in opts
             for v in vals]
    for cmd, opt, value in rng.sample(cases, 24):
        base = [a.format(**fill) for a in OPTIONS[cmd][0]]
        if cmd in ("stream", "predict", "eval", "batch"):
            base += ["--model", str(bundle_dir)]
        refused([cmd, *base, opt, value], capsys)
        assert not out.exists(), (cmd, opt, value)
