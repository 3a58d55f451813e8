"""The ONNX Runtime segmenter: runs the exported fused graph (``rtseg export``).

Given a ``.onnx`` file, it reads the manifest from the graph's metadata; given a bundle, it
exports the fused graph on the fly into the cache folder (:func:`rtseg.graph.onnx.cached_onnx`).
Execution providers are tried in the order TensorRT, CUDA, CPU, keeping those that
``onnxruntime.get_available_providers()`` lists (a GPU device keeps TensorRT/CUDA only, with
CPU as ORT's own fallback for unsupported nodes; ``device="cpu"`` keeps CPU only). On CPU the
session runs all graph optimisations with one intra-op thread per core.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from rtseg.errors import UserError, first_line
from rtseg.runtime.base import Segmenter, SegOutput, check_frames

log = logging.getLogger(__name__)

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def cpu_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def providers_for(device: str, fp16: bool = False, cache: Path | None = None) -> list:
    """The provider list for ``device``, filtered by what this onnxruntime build offers."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    if device == "cpu":
        return ["CPUExecutionProvider"]
    out: list = []
    if "TensorrtExecutionProvider" in available:
        opts = {"trt_fp16_enable": bool(fp16)}
        if cache is not None:
            opts.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(cache),
                        trt_timing_cache_enable=True, trt_timing_cache_path=str(cache))
        out.append(("TensorrtExecutionProvider", opts))
    if "CUDAExecutionProvider" in available:
        out.append(("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"}))
    if not out:
        raise UserError(f"device '{device}' asked for, but this onnxruntime has no GPU provider "
                        f"(available: {', '.join(sorted(available))}); install onnxruntime-gpu "
                        "or use --device cpu")
    out.append("CPUExecutionProvider")
    return out


def session_options(device: str, threads: int | None = None, spin: bool | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if device == "cpu":
        so.intra_op_num_threads = threads or cpu_cores()
        so.inter_op_num_threads = 1
        if spin is not None:
            so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    so.log_severity_level = 3
    return so


class OnnxSegmenter(Segmenter):
    """Frames through an exported fused graph in ONNX Runtime."""

    name = "onnxruntime"

    def __init__(self, model: str | os.PathLike, device: str = "cpu", fp16: bool = False,
                 threads: int | None = None, spin: bool | None = None) -> None:
        import onnxruntime as ort

        from rtseg.graph.metadata import read_onnx_metadata

        self.path = Path(model)
        self.manifest, self.layer, self.precision = read_onnx_metadata(self.path)
        self.device = "cpu" if device == "cpu" else device
        cache = self.path.parent / ".trt-cache" if device != "cpu" else None
        providers = providers_for(self.device, fp16 or self.precision == "fp16", cache)
        try:
            self.session = ort.InferenceSession(str(self.path), session_options(self.device, threads, spin),
                                                providers=providers)
        except Exception as exc:
            raise UserError(f"cannot load ONNX model {self.path}: "
                            f"{first_line(exc)}") from None
        names_in = [i.name for i in self.session.get_inputs()]
        names_out = [o.name for o in self.session.get_outputs()]
        if names_in != ["frames"] or names_out[:3] != ["prob", "cam", "mask"]:
            raise UserError(f"{self.path} is not an rtseg fused graph (inputs {names_in}, outputs {names_out})")
        self.providers = self.session.get_providers()
        self.name = f"onnxruntime-{self.precision}"

    def __call__(self, frames: np.ndarray) -> SegOutput:
        frames = check_frames(frames)
        prob, cam, mask = self.session.run(["prob", "cam", "mask"], {"frames": frames})
        return SegOutput(prob.astype(np.float32, copy=False), cam.astype(np.float32, copy=False),
                         mask.astype(np.uint8, copy=False))

    def describe(self) -> str:
        prov = self.providers[0].replace("ExecutionProvider", "") if self.providers else "?"
        return f"{self.name} ({prov}) on {self.device}, CAM layer {self.layer}"
