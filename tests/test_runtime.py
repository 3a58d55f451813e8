"""Runtime backends: one interface, auto selection, and one-line errors for bad input.

Exports come from the session's shared cache (see tests/test_fused.py): the calibrated
bundle's layer-14 fp32 graph is exported at most once per session.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
import torch

from rtseg.errors import UserError
from rtseg.graph.metadata import META_MANIFEST
from rtseg.graph.onnx import cached_onnx
from rtseg.runtime import BACKENDS, available_backends, create_segmenter
from rtseg.runtime.base import Segmenter
from rtseg.runtime.torch_eager import EagerSegmenter
from rtseg.synthetic import make_dataset

S = 64


pytestmark = pytest.mark.usefixtures("rtseg_cache")


@pytest.fixture(scope="module")
def onnx_file(calibrated_bundle, onnx_cache):
    return cached_onnx(calibrated_bundle, 14, cache=onnx_cache)


@pytest.fixture(scope="module")
def frames():
    samples = make_dataset(2, 1, size=(90, 70), seed=7)
    return np.ascontiguousarray(np.stack([s.image[..., ::-1] for s in samples]))


@pytest.fixture(scope="module")
def reference(calibrated_bundle, frames):
    from rtseg.runtime.active import ViewSegmenter

    # the eager reference behind the view every created segmenter has (the frame resized once)
    seg = ViewSegmenter(EagerSegmenter(calibrated_bundle, "cpu", 14))
    try:
        return seg(frames)
    finally:
        seg.close()


def close(got, ref, tol=1e-4):
    assert got.cam.shape == ref.cam.shape == (len(ref.prob), S, S)
    assert got.mask.dtype == np.uint8 and got.cam.dtype == np.float32 and got.prob.dtype == np.float32
    assert np.abs(got.cam - ref.cam).max() <= tol
    assert np.abs(got.prob - ref.prob).max() <= 1e-5
    assert (got.mask != ref.mask).mean() <= 0.002


def test_available_backends_cpu():
    avail = available_backends("cpu")
    assert "onnxruntime" in avail and "torch" in avail and "tensorrt" not in avail
    assert avail[0] == "onnxruntime"  # fastest first on CPU
    assert set(available_backends()) <= set(BACKENDS)


@pytest.mark.parametrize("backend", ["auto", "torch", "torch-fused", "onnxruntime"])
def test_backends_agree_with_eager(bundle_dir, frames, reference, backend):
    seg = create_segmenter(str(bundle_dir), backend, "cpu")
    assert isinstance(seg, Segmenter) and seg.manifest.input_size == S
    close(seg(frames), reference)
    assert seg.describe()


def test_onnx_file_and_auto_logs(onnx_file, frames, reference, caplog):
    with caplog.at_level(logging.INFO, logger="rtseg.runtime"):
        seg = create_segmenter(str(onnx_file), "auto", "cpu")
    assert seg.backend == "onnxruntime"
    assert any("backend auto ->" in r.getMessage() for r in caplog.records)
    close(seg(frames), reference)
    seg.warmup(50, 60, batch=2, runs=1)


def test_bundle_object_and_layer(calibrated_bundle, frames):
    from rtseg.runtime.active import ViewSegmenter

    seg = create_segmenter(calibrated_bundle, "torch-fused", "cpu", layer="head")
    ref = ViewSegmenter(EagerSegmenter(calibrated_bundle, "cpu", "head"))
    close(seg(frames), ref(frames))
    ref.close()


def test_onnxruntime_session_options(onnx_file):
    from rtseg.runtime.onnx_backend import OnnxSegmenter, cpu_cores

    seg = OnnxSegmenter(onnx_file, "cpu")
    opts = seg.session.get_session_options()
    assert opts.intra_op_num_threads == cpu_cores()
    assert seg.providers == ["CPUExecutionProvider"]


def test_overlapped_segmenter_does_not_spin(onnx_file):
    """The live loop's segmenter shares two cores with decoding and drawing: its onnxruntime
    threads must not spin-wait (the bench's segmenter alone keeps onnxruntime's default)."""
    from rtseg.runtime.loader import create

    key = "session.intra_op.allow_spinning"
    shared = create(onnx_file, "onnxruntime", "cpu", overlapped=True).inner
    assert shared.session.get_session_options().get_session_config_entry(key) == "0"
    alone = create(onnx_file, "onnxruntime", "cpu").inner
    with pytest.raises(Exception):  # not set: onnxruntime's default
        alone.session.get_session_options().get_session_config_entry(key)


# --- bad input: UserError, one line ----------------------------------------------------------
def one_line(exc_info):
    msg = str(exc_info.value)
    assert "\n" not in msg and msg
    return msg


def test_corrupt_onnx(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf" * 10)
    with pytest.raises(UserError) as e:
        create_segmenter(str(bad), "auto", "cpu")
    assert "bad.onnx" in one_line(e)


def test_onnx_without_rtseg_metadata(tmp_path):
    from onnx import TensorProto, helper

    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(UserError) as e:
        create_segmenter(str(path), "onnxruntime", "cpu")
    assert "rtseg export" in one_line(e)


def test_manifest_lacking_fields(onnx_file, tmp_path):
    import json

    proto = onnx.load(str(onnx_file))
    for p in proto.metadata_props:
        if p.key == META_MANIFEST:
            d = json.loads(p.value)
            del d["input_size"]
            p.value = json.dumps(d)
    path = tmp_path / "nofield.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(UserError) as e:
        create_segmenter(str(path), "onnxruntime", "cpu")
    assert "input_size" in one_line(e)


def test_bad_layers(bundle_dir, onnx_file):
    with pytest.raises(UserError) as e:
        create_segmenter(str(bundle_dir), "torch", "cpu", layer=23)
    assert "out of range" in one_line(e)
    with pytest.raises(UserError):
        create_segmenter(str(bundle_dir), "torch-fused", "cpu", layer="nope")
    with pytest.raises(UserError) as e:  # an exported file computes one layer
        create_segmenter(str(onnx_file), "onnxruntime", "cpu", layer=22)
    assert "layer 14" in one_line(e)


def test_engine_and_gpu_errors(tmp_path, bundle_dir):
    eng = tmp_path / "m.engine"
    eng.write_bytes(b"\x00" * 64)
    with pytest.raises(UserError) as e:  # no tensorrt here, or a corrupt engine where there is
        create_segmenter(str(eng), "auto", "cuda" if torch.cuda.is_available() else "cpu")
    one_line(e)
    with pytest.raises(UserError):
        create_segmenter(str(bundle_dir), "tensorrt", "cpu")
    with pytest.raises(UserError):
        create_segmenter(str(tmp_path / "missing.onnx"), "auto", "cpu")
    with pytest.raises(UserError):
        create_segmenter(str(bundle_dir), "warp-drive", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError) as e:
            create_segmenter(str(bundle_dir), "torch", "cuda")
        assert "CUDA" in one_line(e)


def test_torch_fused_modes_need_cuda(calibrated_bundle):
    from rtseg.runtime.torch_fused import FusedTorchSegmenter

    if torch.cuda.is_available():
        pytest.skip("CPU-only check")
    with pytest.raises(UserError):
        FusedTorchSegmenter(calibrated_bundle, "cpu", mode="graph")
    with pytest.raises(UserError):
        FusedTorchSegmenter(calibrated_bundle, "cpu", fp16=True)


def test_unwritable_cache(bundle_dir, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("RTSEG_CACHE", str(blocker / "sub"))
    from rtseg.model.bundle import load_bundle

    b = load_bundle(bundle_dir)
    b.manifest = b.manifest.replace(cam_layer=3)  # not in the cache: would need an export
    with pytest.raises(UserError) as e:
        create_segmenter(b, "onnxruntime", "cpu")
    assert "RTSEG_CACHE" in one_line(e)
