"""The int8 graph (``rtseg export --int8``): what is quantized, the quality gate, the loader, bench.

The graph-structure tests use efficientnet-lite1 (ImageNet weights: not degenerate in eval mode)
with the CAM-refining head and CAM layer 14, so the graph holds all three kinds of convolution:
the backbone's, the head's and the Grad-CAM backward's. The command's tests use the session's
calibrated model (tests/conftest.py) and its export cache.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from helpers import run_cli

from rtseg.graph.quantize import Int8Config, backbone_convs, fused_activations, int8_name, \
    quantize_graph, quantized_convs
from rtseg.runtime import create_segmenter
from rtseg.runtime.int8 import GateResult, QualityGateFailed, ViewReader, export_int8, frame_files

SIZE = 64


def _frames_dir(root, n, seed, hw=(72, 96)):
    import cv2

    from rtseg.synthetic import make_sample

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for i in range(n):
        cv2.imwrite(str(root / f"f{i}.png"), make_sample(rng, hw, polyp=i % 2 == 0).image[..., ::-1])
    return root


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    base = tmp_path_factory.mktemp("int8-frames")
    return _frames_dir(base / "calib", 4, seed=1), _frames_dir(base / "check", 4, seed=2)


@pytest.fixture(scope="module")
def lite_graph(tmp_path_factory, frames):
    """(bundle, fp32 graph, int8 graph) of efficientnet-lite1 + head, CAM layer 14."""
    from rtseg.graph.onnx import export_onnx
    from rtseg.model.arch import LITE_MEAN, LITE_STD
    from rtseg.model.bundle import Bundle, build_model
    from rtseg.model.head import HeadConfig
    from rtseg.model.manifest import Manifest

    torch.manual_seed(0)
    m = Manifest(arch="efficientnet-lite1", input_size=SIZE, mean=LITE_MEAN, std=LITE_STD,
                 fov_mask=True, cam_layer=14, threshold="above 0.5",
                 head=HeadConfig(gate=True, agree=True).to_dict(), active_area=True)
    model = build_model(m.arch, pretrained=True, head=m.head).eval()
    torch.nn.init.normal_(model._fc.weight, std=0.05)
    bundle = Bundle(model, m)
    out = tmp_path_factory.mktemp("int8-graph")
    fp32 = export_onnx(bundle, out / "lite.onnx").path
    seg = create_segmenter(fp32, "onnxruntime", "cpu")
    int8 = int8_name(fp32)
    quantize_graph(fp32, int8, ViewReader(seg, frame_files([frames[0]], "calibration")),
                   Int8Config(scope="backbone"))
    return bundle, fp32, int8


def _weight_is_float(proto, node) -> bool:
    inits = {i.name: i for i in proto.graph.initializer}
    w = inits.get(node.input[1])
    return w is not None and w.data_type == onnx.TensorProto.FLOAT


def test_int8_quantizes_the_backbone_convolutions_and_nothing_after_them(lite_graph):
    bundle, fp32, int8 = lite_graph
    ref, got = onnx.load(str(fp32)), onnx.load(str(int8))
    backbone = backbone_convs(ref, Int8Config(scope="backbone"))
    # the backbone's forward convolutions, found by the graph's structure: as many as the
    # network has Conv2d outside its classifier and head
    n_backbone = sum(isinstance(mod, torch.nn.Conv2d) for name, mod in bundle.model.named_modules()
                     if not name.startswith(("rtseg_head", "_fc")))
    n_head = sum(isinstance(mod, torch.nn.Conv2d) for mod in bundle.model.rtseg_head.modules())
    assert len(backbone) == n_backbone
    assert quantized_convs(got) == set(backbone)
    others = [n for n in got.graph.node if n.op_type == "Conv" and n.name not in backbone]
    # the head's convolutions and the Grad-CAM backward's (blocks after layer 14) stay float
    assert len(others) > n_head
    assert all(_weight_is_float(got, n) for n in others)
    # only the backbone's tensors are rounded: every QuantizeLinear quantizes an input or the
    # output of a backbone convolution (or of the ReLU6 folded into it), never the classifier's,
    # the gradient's, the head's or the mask's
    by_name = {n.name: n for n in ref.graph.node}
    acts = fused_activations(ref, backbone)
    allowed = {t for name in backbone for t in by_name[name].input[:1]}
    allowed |= {by_name[name].output[0] for name in backbone + acts}
    rounded = {n.input[0] for n in got.graph.node if n.op_type == "QuantizeLinear"}
    assert rounded and rounded <= allowed
    assert not any(n.op_type.startswith("QLinear") or n.op_type == "ConvInteger"
                   for n in got.graph.node)
    meta = {p.key: p.value for p in got.metadata_props}
    assert meta["rtseg_precision"] == "int8"
    assert meta["rtseg_manifest"] == {p.key: p.value for p in ref.metadata_props}["rtseg_manifest"]


def test_int8_config_says_which_backbone_convolutions(lite_graph):
    _, fp32, _ = lite_graph
    ref = onnx.load(str(fp32))
    every = backbone_convs(ref, Int8Config(scope="backbone"))
    # default: the convolutions after the last downsampling block (the last strided
    # convolution and the one projecting its output): a tail of the backbone
    strided = [n.name for n in ref.graph.node if n.name in every and
               any(a.name == "strides" and max(a.ints) > 1 for a in n.attribute)]
    coarsest = backbone_convs(ref)
    assert coarsest == every[every.index(strided[-1]) + 2:]
    assert backbone_convs(ref, Int8Config(scope="backbone", keep_last=5)) == every[:-5]
    assert backbone_convs(ref, Int8Config(scope="backbone", keep_first=3)) == every[3:]
    no_dw = backbone_convs(ref, Int8Config(scope="backbone", depthwise=False))
    assert 0 < len(no_dw) < len(every) and set(no_dw) < set(every)


def test_the_loader_runs_the_int8_file_through_the_segmenter_path(lite_graph):
    from rtseg.runtime.active import ViewSegmenter
    from rtseg.runtime.loader import load_segmenter
    from rtseg.synthetic import make_sample

    _, fp32, int8 = lite_graph
    seg = load_segmenter(str(int8), device="cpu")
    assert isinstance(seg, ViewSegmenter) and seg.name == "onnxruntime-int8"
    ref = create_segmenter(fp32, "onnxruntime", "cpu")
    frame = make_sample(np.random.default_rng(3), (90, 160)).image[None, ..., ::-1].copy()
    got, want = seg(frame), ref(frame)
    assert got.mask.shape == want.mask.shape == (1, SIZE, SIZE) and got.mask.dtype == np.uint8
    assert got.boxes == want.boxes  # the same active-area view in front of either graph
    assert abs(float(got.prob[0]) - float(want.prob[0])) < 0.2
    assert np.abs(got.cam - want.cam).mean() < 0.2


def test_gate_rule():
    ok = GateResult(frames=200, masked=100, dice=0.99, agreement=0.995)
    assert ok.passed
    assert not GateResult(200, 100, 0.9899, 1.0).passed
    assert not GateResult(200, 100, 1.0, 0.994).passed
    assert "0.9899" in GateResult(200, 100, 0.9899, 1.0).line()


def test_a_failing_gate_writes_nothing_unless_forced(lite_graph, frames, tmp_path):
    _, fp32, _ = lite_graph
    calib, check = (frame_files([d], "frames") for d in frames)
    out = tmp_path / "lite.int8.onnx"
    with pytest.raises(QualityGateFailed, match="fails the quality gate"):
        export_int8(fp32, out, calib, check, dice_tol=-0.01, call_tol=0.0)
    assert list(tmp_path.iterdir()) == []
    f, gate = export_int8(fp32, out, calib, check, dice_tol=-0.01, force=True)
    assert out.is_file() and not gate.passed and gate.frames == 4
    assert any("FAILED, forced" in c for c in f.checks)


def test_calibration_and_check_frames_must_be_disjoint(lite_graph, frames, tmp_path):
    from rtseg.errors import UserError

    _, fp32, _ = lite_graph
    calib = frame_files([frames[0]], "frames")
    with pytest.raises(UserError, match="held out"):
        export_int8(fp32, tmp_path / "x.int8.onnx", calib, calib[:1])
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------
# the command
# ------------------------------------------------------------------------------------------
@pytest.fixture
def _env(rtseg_cache, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")


@pytest.mark.parametrize("args,needle", [
    (["--int8"], "--int8 needs --calibration"),
    (["--int8", "--calibration", "CALIB"], "--int8 needs --check"),
    (["--calibration", "CALIB"], "--calibration is an option of --int8"),
    (["--int8", "--calibration", "CALIB", "--check", "CALIB"], "held out"),
    (["--int8", "--calibration", "NOWHERE", "--check", "CHECK"], "not found"),
    (["--int8-scope", "backbone"], "--int8-scope is an option of --int8"),
    (["--int8", "--int8-scope", "all", "--calibration", "CALIB", "--check", "CHECK"],
     "--int8-scope must be one of coarsest, backbone"),
])
def test_int8_option_errors_are_one_line(_env, bundle_dir, frames, tmp_path, capsys, args, needle):
    subst = {"CALIB": str(frames[0]), "CHECK": str(frames[1]), "NOWHERE": str(tmp_path / "none")}
    out_dir = tmp_path / "exp"
    code, _, err = run_cli(["export", "--model", bundle_dir, "--out", out_dir,
                            *[subst.get(a, a) for a in args]], capsys)
    assert code == 2 and needle in err, err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert not out_dir.exists()


def test_export_int8_is_written_only_when_the_gate_passes(_env, bundle_dir, frames, tmp_path,
                                                          capsys, monkeypatch):
    import rtseg.runtime.int8 as int8
    from rtseg.graph.metadata import read_onnx_metadata

    out_dir = tmp_path / "exp"
    argv = ["export", "--model", bundle_dir, "--out", out_dir, "--int8", "--calibration",
            frames[0], "--check", frames[1]]
    monkeypatch.setattr(int8, "DICE_TOL", -0.01)  # no graph can pass
    code, _, err = run_cli(argv, capsys)
    assert code == 1, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: int8 graph not written")
    assert err.strip().splitlines()[-1] == errors[0]
    assert sorted(p.name for p in out_dir.iterdir()) == ["calib64.onnx"]

    monkeypatch.setattr(int8, "DICE_TOL", 1.0)  # any graph passes
    monkeypatch.setattr(int8, "CALL_TOL", 1.0)
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    path = out_dir / "calib64.int8.onnx"
    assert path.is_file() and "gate: Dice" in out and "onnx.checker" in out
    manifest, layer, precision = read_onnx_metadata(path)
    assert precision == "int8" and layer == 14 and manifest.input_size == 64


def test_bench_times_int8_beside_fp32_in_the_same_run(lite_graph):
    from rich.console import Console

    from rtseg.live.bench import run_bench

    _, _, int8 = lite_graph
    res = run_bench(model=str(int8), backend="onnxruntime", batches=[1], frames=2,
                    device="cpu", baseline=False, console=Console(file=None, quiet=True))
    rows = res["rows"]
    assert {r["precision"] for r in rows} == {"fp32", "int8"}
    int8_rows = [r for r in rows if r["precision"] == "int8"]
    assert len(int8_rows) == len(rows) // 2 and all(r["x_fp32"] > 0 for r in int8_rows)
    assert all(r["label"].startswith("onnxruntime int8") for r in int8_rows)
