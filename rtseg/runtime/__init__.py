"""Runtime backends behind one interface: :class:`~rtseg.runtime.base.Segmenter`.

``create_segmenter(model, backend, device, fp16, layer)`` returns a segmenter for

- ``model``: a bundle folder, an exported ``.onnx`` file, a TensorRT ``.engine`` file, a
  :class:`rtseg.model.bundle.Bundle`, or None for the default model shipped with rtseg;
- ``backend``:
  - ``torch``: eager Grad-CAM on CPU (:mod:`.torch_eager`); on CUDA the fused traced graph
    (:mod:`.torch_fused`, fp16, ``torch.compile`` / CUDA graphs);
  - ``torch-eager`` / ``torch-fused``: either of those explicitly (torch-fused runs on CPU too, fp32);
  - ``onnxruntime``: the exported fused graph (:mod:`.onnx_backend`); a bundle is exported on
    the fly into the cache folder;
  - ``tensorrt``: a serialized engine (:mod:`.trt_backend`; needs tensorrt and a GPU);
  - ``auto``: the fastest that is available (an ``.engine`` -> tensorrt, an ``.onnx`` ->
    onnxruntime; a bundle on CUDA -> torch fused (TensorRT needs an engine built once with
    ``rtseg export``), on CPU -> onnxruntime, else torch), logged on ``rtseg.runtime``.
- ``fp16``: None = the backend's default (fp16 on CUDA, fp32 on CPU, where fp16 only costs);
- ``layer``: CAM layer (None = the manifest's; an exported file computes one layer).

Every segmenter returned sits behind :class:`rtseg.runtime.active.ViewSegmenter` (the frame's
active area, resized once on the CPU). See :mod:`rtseg.runtime.base` for the call convention.
Bad input raises UserError.
"""

from __future__ import annotations

import logging
from pathlib import Path

from rtseg.errors import UserError
from rtseg.runtime.base import Segmenter, SegOutput, check_frames

__all__ = ["Segmenter", "SegOutput", "check_frames", "create_segmenter", "available_backends",
           "BACKENDS"]

log = logging.getLogger(__name__)

#: names create_segmenter accepts
BACKENDS = ("auto", "torch", "torch-eager", "torch-fused", "onnxruntime", "tensorrt")
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def _has_onnxruntime() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except Exception:
        return False
    return True


def _ort_has_gpu() -> bool:
    try:
        import onnxruntime as ort
    except Exception:
        return False
    return bool(set(ort.get_available_providers()) & {"CUDAExecutionProvider",
                                                         "TensorrtExecutionProvider"})


def available_backends(device: str = "auto") -> list[str]:
    """Backends that can run here on ``device`` ("auto": CUDA if present), fastest first."""
    import torch

    from rtseg.runtime.trt_backend import tensorrt_available

    cuda = torch.cuda.is_available() and device != "cpu"
    out = []
    if cuda and tensorrt_available():
        out.append("tensorrt")
    if cuda:
        out.append("torch")
    if _has_onnxruntime() and (not cuda or _ort_has_gpu()):
        out.append("onnxruntime")
    if not cuda:
        out.append("torch")
    return out


def _model_kind(model) -> str:
    if model is None:
        return "bundle"
    if hasattr(model, "manifest") and hasattr(model, "model"):
        return "bundle-object"
    p = Path(model)
    if p.suffix.lower() == ".onnx":
        return "onnx"
    if p.suffix.lower() in ENGINE_SUFFIXES:
        return "engine"
    return "bundle"


def create_segmenter(model=None, backend: str = "auto", device: str = "auto",
                     fp16: bool | None = None, layer=None, **options) -> Segmenter:
    """A segmenter for ``model`` on ``backend``/``device`` (see the module doc).

    ``options`` go to the backend: ``mode`` (torch fused: auto/compile/graph/plain),
    ``threads`` and ``spin`` (onnxruntime on CPU).
    """
    from rtseg.model.arch import parse_layer
    from rtseg.model.bundle import resolve_bundle, resolve_device

    if backend not in BACKENDS:
        raise UserError(f"unknown backend '{backend}' (use {', '.join(BACKENDS)})")
    layer = parse_layer(layer)
    kind = _model_kind(model)
    if kind in ("onnx", "engine") and not Path(model).is_file():
        raise UserError(f"model file not found: {model}")
    dev = resolve_device(device)
    cuda = dev.startswith("cuda")
    chosen = backend
    if backend == "auto":
        if kind == "engine":
            chosen = "tensorrt"
        elif kind == "onnx":
            chosen = "onnxruntime"
        elif cuda:
            chosen = "torch-fused"
        else:
            chosen = "onnxruntime" if _has_onnxruntime() else "torch-eager"
    elif backend == "torch":
        chosen = "torch-fused" if cuda else "torch-eager"
    if kind == "engine" and chosen != "tensorrt":
        raise UserError(f"{model} is a TensorRT engine: use --backend tensorrt (or auto)")
    if kind == "onnx" and chosen != "onnxruntime":
        raise UserError(f"{model} is an ONNX file: use --backend onnxruntime (or auto)")
    if fp16 and not cuda and kind in ("bundle", "bundle-object"):
        log.warning("fp16 ignored on CPU (no speed-up there); running fp32")
        fp16 = False

    if chosen == "onnxruntime" and cuda and device == "auto" and not _ort_has_gpu():
        log.info("onnxruntime has no GPU provider here: running it on the CPU")
        dev, cuda = "cpu", False
        fp16 = False if kind in ("bundle", "bundle-object") else fp16
    seg = _build(chosen, model, kind, dev, fp16, layer, options, resolve_bundle)
    seg.backend = chosen
    from rtseg.runtime.active import ViewSegmenter

    seg = ViewSegmenter(seg)  # the frame's active area, resized once on the CPU
    if backend == "auto":
        log.info("backend auto -> %s", seg.describe())
    return seg


def _bundle(model, kind, resolve_bundle):
    if kind == "bundle-object":
        return model
    return resolve_bundle(model, "cpu")


def _check_file_layer(seg, layer, model) -> None:
    if layer is not None and layer != seg.layer:
        raise UserError(f"{model} computes CAM layer {seg.layer}; export it again with --layer {layer}")


def _build(chosen, model, kind, dev, fp16, layer, options, resolve_bundle) -> Segmenter:
    cuda = dev.startswith("cuda")
    if chosen == "tensorrt":
        from rtseg.runtime.trt_backend import TrtSegmenter

        if kind != "engine":
            raise UserError("the tensorrt backend runs a TensorRT .engine file: build one with "
                            "`rtseg export --fp16` on a machine with TensorRT and a GPU")
        seg = TrtSegmenter(model, dev if cuda else "cpu")
        _check_file_layer(seg, layer, model)
        return seg
    if chosen == "onnxruntime":
        if not _has_onnxruntime():
            raise UserError("the onnxruntime backend needs the onnxruntime package")
        from rtseg.runtime.onnx_backend import OnnxSegmenter

        kw = {k: options[k] for k in ("threads", "spin") if k in options}
        if kind == "onnx":
            seg = OnnxSegmenter(model, dev, bool(fp16), **kw)
            _check_file_layer(seg, layer, model)
            return seg
        from rtseg.graph.onnx import cached_onnx

        bundle = _bundle(model, kind, resolve_bundle)
        half = cuda if fp16 is None else bool(fp16)
        path = cached_onnx(bundle, layer, half)
        return OnnxSegmenter(path, dev, half, **kw)
    bundle = _bundle(model, kind, resolve_bundle)
    if chosen == "torch-fused":
        from rtseg.runtime.torch_fused import FusedTorchSegmenter

        return FusedTorchSegmenter(bundle, dev, fp16, layer, mode=options.get("mode", "auto"))
    from rtseg.runtime.torch_eager import EagerSegmenter

    if fp16:
        raise UserError("the eager torch segmenter runs fp32 only")
    return EagerSegmenter(bundle, dev, layer)
