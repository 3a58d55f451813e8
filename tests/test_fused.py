"""The fused forward + Grad-CAM graph equals the eager Grad-CAM (rtseg.model.cam) it is traced from.

Exports are the slow part (~10-30 s each on 2 cores): each (bundle, layer, precision) is
exported once per session into a shared cache folder (``cached_onnx``), which
tests/test_runtime.py and tests/test_export_cli.py reuse. Layer 14 runs on conftest's
``calibrated_bundle``, layer 22 on ``noise_bundle`` (below), batch sizes 1 and 3 on both.

Conditioning: Grad-CAM's min-max normalisation divides by the raw CAM's range, so a CAM
difference measures the network's own rounding sensitivity too. On the BatchNorm-calibrated
test model, image-like frames are well conditioned (eager fp32 vs eager fp64: ~1e-5), but
uniform-noise frames drive it far outside its calibrated range (logits ~+-1000; eager fp32 vs
fp64 already differs by up to 2e-1), where no fp32 implementation can agree to 1e-4. Random
frames are therefore tested on ``noise_bundle``, calibrated on a mix of synthetic and random
frames (eager fp32 vs fp64 ~2e-5 there), which also has the otsu threshold and the FOV mask.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rtseg.train.calibrate import calibrate_bn
from rtseg.model.gradcam import GradCAM
from rtseg.graph.metadata import read_onnx_metadata
from rtseg.graph.onnx import cached_onnx
from rtseg.graph.fold import StaticConv2d, check_folded, fold_model
from rtseg.graph.fused import trace_fused
from rtseg.model.bundle import new_bundle
from rtseg.model.preprocess import frames_to_input
from rtseg.runtime.onnx_backend import OnnxSegmenter
from rtseg.runtime.torch_eager import EagerSegmenter
from rtseg.synthetic import make_dataset

S = 64
CAM_TOL = 1e-4
PROB_TOL = 1e-5


@pytest.fixture(scope="session")
def noise_bundle():
    """Calibrated on synthetic + uniform random frames; otsu threshold and FOV mask on."""
    torch.manual_seed(1)
    b = new_bundle(input_size=S, cam_layer=14, threshold="otsu", fov_mask=True)
    return calibrate_bn(b, noise=0.5)


def image_frames(n: int, hw=(90, 70), seed: int = 5) -> np.ndarray:
    """BGR synthetic colonoscopy-like frames (half with a polyp), size != S."""
    samples = make_dataset((n + 1) // 2, n // 2, size=hw, seed=seed)
    return np.ascontiguousarray(np.stack([s.image[..., ::-1] for s in samples]))


def eager(bundle, frames, layer):
    seg = EagerSegmenter(bundle, "cpu", layer)
    try:
        return seg(frames)
    finally:
        seg.close()


def assert_close(got, ref, cam_tol=CAM_TOL, prob_tol=PROB_TOL, what=""):
    d_cam = np.abs(got.cam - ref.cam).max()
    d_prob = np.abs(got.prob - ref.prob).max()
    assert got.cam.dtype == np.float32 and got.prob.dtype == np.float32 and got.mask.dtype == np.uint8
    assert got.cam.shape == ref.cam.shape and got.prob.shape == ref.prob.shape
    assert d_cam <= cam_tol, f"{what}: max |cam difference| {d_cam:.2e}"
    assert d_prob <= prob_tol, f"{what}: max |prob difference| {d_prob:.2e}"
    # masks: identical except where the CAM sits within the tolerance of a threshold
    differ = got.mask != ref.mask
    assert differ.mean() <= 0.002, f"{what}: {differ.mean():.3%} of mask pixels differ"


# ---------------------------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------------------------
def test_fold_model_same_function(calibrated_bundle):
    model = calibrated_bundle.model
    folded = fold_model(model, S)
    assert check_folded(model, folded, S) < 1e-4
    assert not any(p.requires_grad for p in folded.parameters())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(p.requires_grad for p in model.parameters()), "the original must stay untouched"
    x = frames_to_input(torch.from_numpy(image_frames(2)), S, calibrated_bundle.manifest.mean,
                        calibrated_bundle.manifest.std, bgr=True)
    with torch.no_grad():
        za, zb = model(x), folded(x)
    assert torch.allclose(za, zb, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cin,cout,k,stride,groups,pads", [
    (8, 16, 1, 1, 1, (0, 0, 0, 0)),  # pointwise
    (12, 12, 3, 1, 12, (1, 1, 1, 1)),  # depthwise, stride 1
    (12, 12, 3, 2, 12, (0, 1, 0, 1)),  # depthwise, stride 2, asymmetric "same" pad
    (12, 12, 5, 2, 12, (1, 2, 1, 2)),  # depthwise 5x5 stride 2
    (12, 12, 5, 2, 12, (2, 2, 2, 2)),  # static padding computed for another size
    (3, 8, 3, 2, 1, (0, 1, 0, 1)),  # general (the stem): transposed convolution
])
@pytest.mark.parametrize("hw", [(16, 16), (15, 15)])
def test_static_conv_input_grad_is_the_adjoint(cin, cout, k, stride, groups, pads, hw):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(cout, cin // groups, k, k, generator=g, dtype=torch.float64)
    conv = StaticConv2d(w, None, (stride, stride), (1, 1), groups, pads, hw)
    x = torch.randn(2, cin, *hw, generator=g, dtype=torch.float64, requires_grad=True)
    ref_out = F.conv2d(F.pad(x, pads), w, None, stride, 0, 1, groups)
    out = conv(x)  # through the custom backward
    assert torch.allclose(out, ref_out)
    gy = torch.randn_like(out)
    ref, = torch.autograd.grad(ref_out, x, gy)
    got, = torch.autograd.grad(out, x, gy)
    assert got.shape == x.shape
    assert torch.allclose(got, ref, atol=1e-10), conv.kind


@pytest.mark.parametrize("layer", [14, "head"])
def test_traced_graph_matches_eager(calibrated_bundle, layer):
    """The traced GraphModule in PyTorch (no export): same numbers as GradCAM."""
    gm = trace_fused(calibrated_bundle, layer)
    for n, hw in ((1, (64, 64)), (3, (90, 70))):
        frames = image_frames(n, hw)
        prob, cam, mask = gm(torch.from_numpy(frames))
        ref = eager(calibrated_bundle, frames, layer)
        got = type(ref)(prob.numpy(), cam.numpy(), mask.numpy())
        assert_close(got, ref, what=f"traced L{layer} B{n}")
    names = {str(n.target) for n in gm.graph.nodes if n.op == "call_function"}
    assert not any("convolution_backward" in t or "batch_norm" in t for t in names)


def test_traced_graph_compiles_whole(calibrated_bundle):
    """torch.compile (the CUDA fast path of the torch backend) captures the traced graph in
    one piece: no op that Dynamo cannot trace (a ``sym_numel`` from a ``sum`` backward broke
    it once). The ``eager`` backend runs Dynamo's capture without code generation, so this
    is quick; a second frame size recompiles with dynamic shapes and stays exact."""
    torch._dynamo.reset()
    gm = trace_fused(calibrated_bundle, 14)
    fn = torch.compile(gm, backend="eager", fullgraph=True, dynamic=None)
    for n, hw in ((1, (64, 64)), (3, (90, 70))):
        frames = torch.from_numpy(image_frames(n, hw))
        for got, ref in zip(fn(frames), gm(frames)):
            assert torch.equal(got, ref)
    torch._dynamo.reset()


# ---------------------------------------------------------------------------------------------
# ONNX Runtime (CPU) against the eager Grad-CAM
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def graphs(calibrated_bundle, noise_bundle, onnx_cache):
    """(layer, fp16) -> (bundle, OnnxSegmenter of its graph); exported once each per session.

    Layer 14: conftest's calibrated_bundle; layer 22: noise_bundle.
    """
    cache = {}

    def get(layer, fp16=False):
        key = (layer, fp16)
        if key not in cache:
            bundle = calibrated_bundle if layer == 14 else noise_bundle
            cache[key] = bundle, OnnxSegmenter(cached_onnx(bundle, layer, fp16, cache=onnx_cache))
        return cache[key]
    return get


@pytest.mark.parametrize("layer", [14, 22])
@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_matches_eager_image_like(graphs, layer, batch):
    bundle, seg = graphs(layer)
    assert seg.layer == layer and seg.manifest.input_size == S
    for hw in ((90, 70), (48, 100)):
        frames = image_frames(batch, hw, seed=batch)
        got = seg(frames)
        assert got.cam.shape == (batch, S, S) and got.mask.shape == (batch, S, S)
        assert 0.0 <= got.cam.min() and got.cam.max() <= 1.0
        assert_close(got, eager(bundle, frames, layer), what=f"L{layer} B{batch} {hw}")


@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_matches_eager_random_frames(graphs, batch):
    """Uniform random frames (on the model calibrated for them), otsu threshold, FOV mask."""
    bundle, seg = graphs(22)
    assert seg.manifest.threshold.kind == "otsu" and seg.manifest.fov_mask
    rng = np.random.default_rng(batch)
    for hw in ((90, 70), (S, S)):
        frames = rng.integers(0, 256, (batch, *hw, 3), dtype=np.uint8)
        assert_close(seg(frames), eager(bundle, frames, 22), what=f"random B{batch} {hw}")


def test_onnx_dynamic_shapes(graphs):
    """One graph for any batch and frame size; S x S frames (identity resize) too."""
    bundle, seg = graphs(14)
    base = image_frames(2, (720, 1280))
    for frames in (base[:1], image_frames(2, (S, S)), image_frames(5, (33, 200)), base):
        got = seg(frames)
        assert_close(got, eager(bundle, frames, 14), what=str(frames.shape))
    one = seg(base[0])  # a single [H, W, 3] frame is a batch of one
    assert one.cam.shape == (1, S, S)


def test_onnx_metadata(graphs):
    bundle, seg = graphs(22)
    manifest, layer, precision = read_onnx_metadata(seg.path)
    assert layer == 22 and manifest.cam_layer == 22 and precision == "fp32"
    want = bundle.manifest.to_dict()
    got = manifest.to_dict()
    for k in ("arch", "input_size", "mean", "std", "fov_mask", "threshold", "class_names"):
        assert got[k] == want[k], k


def test_cast_input_first_is_exact(graphs):
    """The TensorRT-friendly rewrite (cast the uint8 input first) gives identical outputs."""
    import onnx
    import onnxruntime as ort

    from rtseg.graph.tensorrt import cast_input_first

    _, seg = graphs(14)
    proto = cast_input_first(onnx.load(str(seg.path)))
    onnx.checker.check_model(proto)
    assert proto.graph.node[0].op_type == "Cast"
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    frames = image_frames(2, (90, 70))
    got = sess.run(["prob", "cam", "mask"], {"frames": frames})
    ref = seg(frames)
    assert np.array_equal(got[1], ref.cam) and np.array_equal(got[2], ref.mask)
    assert np.array_equal(got[0], ref.prob)


def test_onnx_fp16(graphs):
    """fp16 graph: uint8 in, fp32 out, half precision inside.

    The fp16 network's own rounding sets the error: this model's eager Grad-CAM run in fp16
    (PyTorch, CPU) is off the fp32 one by a few 1e-2 at the worst pixel. So the graph must be
    as close to the fp32 eager CAM as fp16 eager is (max), within 1e-2 on average, and give
    the same probabilities to 1e-2.
    """
    import onnx

    calibrated_bundle, seg = graphs(14, fp16=True)
    assert seg.precision == "fp16"
    proto = onnx.load(str(seg.path))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    outs = {o.name: o.type.tensor_type.elem_type for o in proto.graph.output}
    assert outs == {"prob": onnx.TensorProto.FLOAT, "cam": onnx.TensorProto.FLOAT,
                    "mask": onnx.TensorProto.UINT8}
    n_half = sum(i.data_type == onnx.TensorProto.FLOAT16 for i in proto.graph.initializer)
    assert n_half > 100, "weights must be fp16 inside"

    frames = image_frames(4, (90, 70), seed=3)
    ref = eager(calibrated_bundle, frames, 14)
    got = seg(frames)
    # eager Grad-CAM in fp16 (same definition, half precision) for the error scale
    m = calibrated_bundle.manifest
    x = frames_to_input(torch.from_numpy(frames), S, m.mean, m.std, bgr=True, fov=m.fov_mask)
    with GradCAM(copy.deepcopy(calibrated_bundle.model).half(), 14) as cam16:
        _, c16 = cam16(x.half())
    e16 = float(np.abs(c16.float().numpy() - ref.cam).max())
    d = np.abs(got.cam - ref.cam)
    assert d.mean() <= 1e-2, d.mean()
    assert d.max() <= max(2 * e16, 1e-2), (d.max(), e16)
    assert np.abs(got.prob - ref.prob).max() <= 1e-2
    assert (got.mask == ref.mask).mean() >= 0.97
