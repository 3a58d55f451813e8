"""``rtseg export``: the fused forward + Grad-CAM graph as ONNX (fp32, fp16, int8 kept only where
its quality holds) and a TensorRT engine."""

from __future__ import annotations

import re
import sys
from typing import List, Optional

import typer

from rtseg.cli.app import SHIPPED_MODEL, app
from rtseg.errors import UserError, first_line

DEFAULT_FRAME_SIZES = ("1280x720", "1920x1080")
DEFAULT_BATCHES = (1, 8)


def parse_frame_sizes(values: List[str] | None, input_size: int) -> list[tuple[int, int]]:
    """["1280x720", "640x480,320x240"] -> [(1280, 720), ...] as (width, height)."""
    out = []
    for v in values or []:
        for part in str(v).replace(" ", "").split(","):
            if not part:
                continue
            m = re.fullmatch(r"(\d+)[xX](\d+)", part)
            if not m:
                raise UserError(f"--frame-size must be WxH (e.g. 1280x720), not '{part}'")
            w, h = int(m.group(1)), int(m.group(2))
            if not (1 <= w <= 8192 and 1 <= h <= 8192):
                raise UserError(f"--frame-size {part}: width and height must be 1..8192")
            out.append((w, h))
    if not out:
        out = [(input_size, input_size)] + [tuple(int(x) for x in s.split("x")) for s in DEFAULT_FRAME_SIZES]
    return out


def parse_batches(values: List[str] | None) -> list[int]:
    out = []
    for v in values or []:
        for part in str(v).replace(" ", "").split(","):
            if not part:
                continue
            if not part.isdigit() or not 1 <= int(part) <= 1024:
                raise UserError(f"--batch must be a whole number 1..1024, not '{part}'")
            out.append(int(part))
    return out or list(DEFAULT_BATCHES)


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n}"


def int8_inputs(int8: bool, calibration, check, force: bool, scope: str = "coarsest"):
    """(calibration files, check files) for --int8, else None; one error line for what is
    missing or misplaced (calibration on anything but real frames means nothing)."""
    from rtseg.graph.quantize import SCOPES
    from rtseg.runtime.int8 import check_disjoint, frame_files, read_frame

    if scope not in SCOPES:
        raise UserError(f"--int8-scope must be one of {', '.join(SCOPES)}, not '{scope}'")
    if not int8:
        given = [n for n, v in (("--calibration", calibration), ("--check", check),
                                ("--force", force), ("--int8-scope", scope != SCOPES[0])) if v]
        if given:
            raise UserError(f"{given[0]} is an option of --int8")
        return None
    if not calibration:
        raise UserError("--int8 needs --calibration frames (image files or folders from the "
                        "endoscopes the model will see): calibration on generated noise means "
                        "nothing")
    if not check:
        raise UserError("--int8 needs --check frames (held-out image files or folders) to "
                        "compare the int8 graph with fp32 on")
    calib, held = frame_files(calibration, "--calibration"), frame_files(check, "--check")
    check_disjoint(calib, held)
    for files, what in ((calib, "--calibration"), (held, "--check")):  # before any export work
        if not any(read_frame(p) is not None for p in files):
            raise UserError(f"no readable frame among the {what} frames")
    return calib, held


def export_int8_file(bundle, fp32_path, calibration, check, force: bool, scope: str):
    """The int8 file beside ``fp32_path`` (see :func:`rtseg.runtime.int8.export_int8`)."""
    from rtseg.graph.quantize import Int8Config, int8_name
    from rtseg.runtime.int8 import export_int8
    from rtseg.runtime.verify import check_onnx

    f, gate = export_int8(fp32_path, int8_name(fp32_path), calibration, check,
                          Int8Config(scope=scope), force=force, verify=check_onnx, bundle=bundle)
    if not gate.passed:
        print(f"warning: written anyway (--force): {gate.line()}", file=sys.stderr)
    return f


@app.command(
    "export",
    epilog="Examples:\n\n"
    "  rtseg export                                      # export/default_model.onnx\n\n"
    "  rtseg export --model runs/b1 --fp16 --frame-size 1920x1080 --batch 1 --batch 8\n\n"
    "  rtseg export --model runs/b1 --layer head --out /tmp/graphs\n\n"
    "  rtseg export --int8 --calibration frames/calib --check frames/held-out",
)
def export(
    model: Optional[str] = typer.Option(
        None, "--model", "-m", help=f"Bundle folder. Default: {SHIPPED_MODEL}."),
    out: str = typer.Option("export", "--out", "-o", help="Output folder."),
    fp16: bool = typer.Option(
        False, "--fp16", help="Also write <name>.fp16.onnx (and a TensorRT FP16 engine where "
        "TensorRT and a GPU exist)."),
    layer: Optional[str] = typer.Option(
        None, help="CAM layer (block index or 'head'). Default: the manifest's."),
    frame_size: Optional[List[str]] = typer.Option(
        None, "--frame-size", help="Frame size WxH the engine is built for; repeat or comma-"
        "separate (first = optimum). The ONNX graph takes any size. Default: SxS, 1280x720, "
        "1920x1080."),
    batch: Optional[List[str]] = typer.Option(
        None, "--batch", help="Batch sizes for the engine's profile; repeat or comma-separate "
        "(first = optimum). Default: 1, 8."),
    int8: bool = typer.Option(
        False, "--int8", help="Also write <name>.int8.onnx: the backbone's convolutions int8 "
        "(calibrated on --calibration frames), the classifier, Grad-CAM, head and mask fp32; "
        "written only if, on the --check frames, its masks are within 0.01 Dice of fp32's and "
        "its calls agree on 99.5% of frames."),
    calibration: Optional[List[str]] = typer.Option(
        None, "--calibration", help="With --int8: frames (image files or folders, repeatable) "
        "from the endoscopes the model will see, to calibrate the int8 activations (~100)."),
    check: Optional[List[str]] = typer.Option(
        None, "--check", help="With --int8: held-out frames (image files or folders, repeatable; "
        "none of the --calibration ones) the int8 graph is compared with fp32 on (~300)."),
    int8_scope: str = typer.Option(
        "coarsest", "--int8-scope", help="With --int8: which backbone convolutions are int8: "
        "coarsest (those after its last downsampling block: the shipped model passes the gate, "
        "barely faster) or backbone (all: ~1.3-2x faster on CPU, but the shipped model's masks "
        "move beyond the gate)."),
    force: bool = typer.Option(
        False, "--force", help="With --int8: write the int8 file even if it fails the gate."),
    cache: bool = typer.Option(
        True, "--cache/--no-cache", help="Reuse an identical graph from the export cache "
        "($RTSEG_CACHE or ~/.cache/rtseg; keyed by weights, manifest, layer, precision and "
        "the rtseg/torch versions and source)."),
) -> None:
    """Export the fused forward + Grad-CAM graph: ONNX (fp32, --fp16) and a TensorRT engine.

    The graph takes BGR uint8 frames [B, H, W, 3] and returns prob [B], cam [B, S, S] and mask [B, S, S]; the bundle's manifest is embedded. Every file is checked (onnx.checker, ONNX Runtime against the eager Grad-CAM on one frame) before it is put in place.
    """  # noqa: E501
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from rtseg.atomic import removed_if_failed
    from rtseg.evaluate.predict import check_out_dir
    from rtseg.model.arch import parse_layer
    from rtseg.model.bundle import resolve_bundle

    console = Console(stderr=False)
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file, not a folder")
    check_out_dir(out_dir)  # fail early (exit 2) on an unwritable folder; creates nothing
    layer_v = parse_layer(layer)
    int8_frames = int8_inputs(int8, calibration, check, force, int8_scope)
    batches = parse_batches(batch)
    bundle = resolve_bundle(model, "cpu")
    from rtseg.model.manifest import resolve_layer

    used_layer = resolve_layer(bundle.manifest, layer_v)
    sizes = parse_frame_sizes(frame_size, bundle.manifest.input_size)
    w0, h0 = sizes[0]

    from rtseg.graph.onnx import export_onnx
    from rtseg.runtime.verify import check_onnx
    from rtseg.graph.tensorrt import build_engine, tensorrt_status

    name = bundle.name
    files = []
    console.print(f"exporting {name} ({bundle.manifest.arch}, input {bundle.manifest.input_size}, "
                  f"CAM layer {used_layer}) to {out_dir}/ ...", markup=False)
    with removed_if_failed(out_dir):  # a failed export leaves no empty --out folder
        files.append(export_onnx(bundle, out_dir / f"{name}.onnx", used_layer, fp16=False,
                                 verify=check_onnx, frame_hw=(h0, w0), cache=cache))
        if fp16:
            files.append(export_onnx(bundle, out_dir / f"{name}.fp16.onnx", used_layer,
                                     fp16=True, verify=check_onnx, frame_hw=(h0, w0),
                                     cache=cache))
        if int8_frames:
            console.print(f"quantizing to int8 on {len(int8_frames[0])} calibration frames, "
                          f"checking on {len(int8_frames[1])} held-out frames ...", markup=False)
            files.append(export_int8_file(bundle, files[0].path, *int8_frames, force,
                                          int8_scope))
    ok, why = tensorrt_status()
    engine_error = None
    if ok and fp16:
        console.print("building the TensorRT engine (FP16, takes minutes) ...", markup=False)
        try:
            files.append(build_engine(files[0].path, out_dir / f"{name}.engine", sizes, batches,
                                      fp16=True))
        except Exception as exc:  # the ONNX files stand; report the engine's failure
            engine_error = first_line(exc, 300)
    elif ok:
        console.print("TensorRT engine skipped: add --fp16 to build one.", markup=False)
    else:
        console.print(f"TensorRT engine skipped: {why}; the ONNX files are written.", markup=False)

    # file names in full (never ellipsized: fp32 and fp16 must stay apart at 80 columns); the
    # folder is in the title; the checks column wraps instead
    table = Table(title=f"rtseg export: {name}, CAM layer {used_layer}, in {out_dir}/")
    names = [f.path.name for f in files] + ([f"{name}.engine"] if engine_error else [])
    table.add_column("file", no_wrap=True, min_width=max(map(len, names)))
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("checks", overflow="fold")
    for f in files:
        table.add_row(f.path.name, _human(f.size), "; ".join(f.checks) or "-")
    if engine_error:
        table.add_row(f"{name}.engine", "-", f"FAILED: {engine_error}")
    console.print(table)
    if engine_error:
        print(f"error: TensorRT engine not built: {engine_error}", file=sys.stderr)
        raise typer.Exit(1)
