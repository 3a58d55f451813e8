"""TensorRT engines from an exported ONNX graph (FP16, one optimisation profile covering the frame
sizes and batch sizes asked) with a ``.json`` sidecar holding the manifest
(:mod:`rtseg.graph.metadata`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from rtseg.atomic import atomic_path, ensure_parent, write_json
from rtseg.errors import UserError
from rtseg.graph.metadata import (META_LAYER, META_MANIFEST, META_PRECISION, engine_sidecar,
                                  graph_manifest, read_onnx_metadata)
from rtseg.graph.onnx import ExportedFile


def cast_input_first(proto, input_name: str = "frames"):
    """An exact rewrite for TensorRT: cast the uint8 input to float32 before anything else.

    In the exported graph the uint8 frames go through the BGR->RGB flip (Slice) and the
    NHWC->NCHW Transpose before their Cast to float, as frames_to_input does; TensorRT
    accepts UINT8 network inputs only into a Cast. Slice and Transpose move data and the cast
    is elementwise, so casting first gives the same values.
    """
    import onnx
    from onnx import helper

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    g = out.graph
    casted = input_name + "_f32"
    for node in g.node:
        for i, name in enumerate(node.input):
            if name == input_name:
                node.input[i] = casted
    cast = helper.make_node("Cast", [input_name], [casted], to=onnx.TensorProto.FLOAT,
                            name="rtseg_cast_input")
    g.node.insert(0, cast)
    # the data-movement chain after the input now carries float: drop its uint8 type hints
    moved = {casted}
    for node in g.node:
        if node.op_type in ("Slice", "Transpose", "Identity", "Gather", "Reshape") and node.input \
                and node.input[0] in moved:
            moved.update(node.output)
    keep = [vi for vi in g.value_info
            if not (vi.name in moved and vi.type.tensor_type.elem_type == onnx.TensorProto.UINT8)]
    del g.value_info[:]
    g.value_info.extend(keep)
    return out


def tensorrt_status() -> tuple[bool, str]:
    """(usable, reason): TensorRT needs the ``tensorrt`` package and a CUDA GPU."""
    try:
        import tensorrt  # noqa: F401
    except Exception:
        return False, "the tensorrt package is not installed"
    try:
        import torch

        if not torch.cuda.is_available():
            return False, "no CUDA GPU is available"
    except Exception:
        return False, "PyTorch cannot see a CUDA GPU"
    return True, f"tensorrt {tensorrt.__version__}"


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike,
                 frame_sizes: Sequence[tuple[int, int]], batches: Sequence[int],
                 fp16: bool = True, workspace_gb: float = 4.0) -> ExportedFile:
    """Build a serialized TensorRT engine from an exported ``.onnx`` file.

    One optimisation profile for input ``frames``: min/max over the asked (H, W) and batch
    sizes, opt = the first of each. ``frame_sizes`` are (width, height). The manifest goes to
    ``<engine>.json`` beside the engine. Raises UserError if TensorRT is not usable.
    """
    ok, why = tensorrt_status()
    if not ok:
        raise UserError(f"cannot build a TensorRT engine: {why}")
    import tensorrt as trt

    onnx_path, engine_path = Path(onnx_path), ensure_parent(Path(engine_path))
    manifest, layer, precision = read_onnx_metadata(onnx_path)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    import onnx

    trt_proto = cast_input_first(onnx.load(str(onnx_path)))
    if not parser.parse(trt_proto.SerializeToString()):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"TensorRT cannot parse {onnx_path}: {errs[:300]}")
    config = builder.create_builder_config()
    if hasattr(config, "set_memory_pool_limit"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    sizes = [(h, w) for (w, h) in frame_sizes]
    profile = builder.create_optimization_profile()
    lo = (min(batches), min(h for h, _ in sizes), min(w for _, w in sizes), 3)
    opt = (batches[0], sizes[0][0], sizes[0][1], 3)
    hi = (max(batches), max(h for h, _ in sizes), max(w for _, w in sizes), 3)
    profile.set_shape("frames", lo, opt, hi)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError(f"TensorRT failed to build an engine from {onnx_path}")
    with atomic_path(engine_path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(bytes(serialized))
    write_json(engine_sidecar(engine_path), {
        META_MANIFEST: graph_manifest(manifest, layer), META_LAYER: layer,
        META_PRECISION: "fp16" if fp16 else precision, "profile": {"min": lo, "opt": opt, "max": hi},
        "tensorrt": trt.__version__, "onnx": onnx_path.name})
    return ExportedFile(engine_path, "tensorrt", ["built (FP16)" if fp16 else "built"])
