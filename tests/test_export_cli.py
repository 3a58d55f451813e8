"""``rtseg export``: files, metadata, checks, table, and exit 2 for bad input.

The command runs in-process (``rtseg.cli.main``); graphs come from the session's shared export
cache (see tests/test_fused.py), so this file adds no export of its own when run with it.
"""

from __future__ import annotations

import json

import onnx
import pytest
from helpers import run_cli

from rtseg.model.bundle import default_bundle_path


@pytest.fixture(autouse=True)
def _env(rtseg_cache, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # a wide rich table: no wrapped paths


def run(argv, capsys):
    return run_cli(argv, capsys)


def test_export_writes_checked_onnx_files(bundle_dir, tmp_path, capsys):
    out_dir = tmp_path / "exp"
    code, out, err = run(["export", "--model", str(bundle_dir), "--out", str(out_dir), "--fp16",
                          "--layer", "14", "--frame-size", "90x70", "--batch", "1", "--batch", "3"],
                         capsys)
    assert code == 0, err
    fp32, fp16 = out_dir / "calib64.onnx", out_dir / "calib64.fp16.onnx"
    assert fp32.is_file() and fp16.is_file()
    assert sorted(p.name for p in out_dir.iterdir()) == ["calib64.fp16.onnx", "calib64.onnx"]
    for path, prec in ((fp32, "fp32"), (fp16, "fp16")):
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
        meta = {p.key: p.value for p in proto.metadata_props}
        manifest = json.loads(meta["rtseg_manifest"])
        assert manifest["cam_layer"] == 14 and manifest["input_size"] == 64
        assert meta["rtseg_layer"] == "14" and meta["rtseg_precision"] == prec
    # the table lists both files with their checks; TensorRT skipped in one line
    assert "onnx.checker" in out and "ORT vs eager 90x70" in out
    assert "calib64.fp16.onnx" in out
    assert sum("TensorRT" in line for line in out.splitlines()) >= 1


def test_export_help_has_example(capsys):
    code, out, _ = run(["export", "--help"], capsys)
    assert code == 0 and "rtseg export --model" in out


@pytest.mark.parametrize("args,needle", [
    (["--layer", "99"], "out of range"),
    (["--frame-size", "big"], "WxH"),
    (["--batch", "0"], "--batch"),
])
def test_export_bad_options(bundle_dir, tmp_path, capsys, args, needle):
    out_dir = tmp_path / "exp"
    code, _, err = run(["export", "--model", str(bundle_dir), "--out", str(out_dir), *args], capsys)
    assert code == 2 and needle in err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_export_unwritable_out(bundle_dir, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, _, err = run(["export", "--model", str(bundle_dir), "--out", str(blocker / "sub")], capsys)
    assert code == 2 and err.startswith("error: ")
    code, _, err = run(["export", "--model", str(bundle_dir), "--out", str(blocker)], capsys)
    assert code == 2 and "is a file" in err


def test_export_missing_model(tmp_path, capsys):
    code, _, err = run(["export", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "not found" in err
    if not (default_bundle_path() / "manifest.json").is_file():
        code, _, err = run(["export", "--out", str(tmp_path / "o")], capsys)
        assert code == 2 and "no --model given" in err


def test_export_on_a_full_disk_is_one_line_and_leaves_no_folder(bundle_dir, tmp_path, capsys,
                                                                monkeypatch):
    import errno
    import shutil
    from pathlib import Path

    def full(src, dst):
        Path(dst).write_bytes(b"\0" * 16)
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(shutil, "copyfile", full)  # the copy out of the export cache
    out_dir = tmp_path / "new" / "exp"
    code, _, err = run(["export", "--model", str(bundle_dir), "--out", str(out_dir),
                        "--layer", "14"], capsys)
    lines = [ln for ln in err.splitlines() if ln.startswith("error")]  # (and a progress note)
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0] == f"error: no space left on device writing {out_dir / 'calib64.onnx'}"
    assert not (tmp_path / "new").exists()
