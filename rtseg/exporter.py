"""Export the fused graph (:mod:`rtseg.fused`) to ONNX and, where TensorRT exists, an engine.

- :func:`export_onnx` writes one ``.onnx`` file (fp32, or fp16 inside with uint8 input and
  fp32/uint8 outputs kept) with the bundle's manifest in its metadata (key
  ``rtseg_manifest``, with ``cam_layer`` = the layer the graph computes, plus ``rtseg_layer``
  and ``rtseg_precision``). Written atomically; checked before it is renamed into place.
- :func:`check_onnx` runs ``onnx.checker`` and one frame through ONNX Runtime compared with the
  eager Grad-CAM (:class:`rtseg.runtime.torch_eager.EagerSegmenter`).
- :func:`build_engine` builds a serialized TensorRT engine (FP16, one optimisation profile
  covering the frame sizes and batch sizes asked) with a ``.json`` sidecar holding the
  manifest (TensorRT engines carry no metadata).
- :func:`cached_onnx` is the on-the-fly export used by the onnxruntime backend when it is
  given a bundle: one file per (weights, manifest, layer, precision, versions) in a cache
  folder (``$RTSEG_CACHE`` or ``~/.cache/rtseg``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from rtseg.atomic import atomic_path, ensure_parent, write_json
from rtseg.errors import UserError

log = logging.getLogger(__name__)

OPSET = 18
META_MANIFEST = "rtseg_manifest"
META_LAYER = "rtseg_layer"
META_PRECISION = "rtseg_precision"
META_VERSION = "rtseg_version"
#: tolerances of the post-export check against the eager Grad-CAM (max |cam difference|):
#: loose enough for any sane model in fp32 (measured ~3e-5 on tests' models), and for fp16
CHECK_TOL = {"fp32": 1e-3, "fp16": 0.1}


@dataclass
class ExportedFile:
    path: Path
    kind: str  # "onnx" / "onnx-fp16" / "tensorrt" / "sidecar"
    checks: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0


# --------------------------------------------------------------------------------------------
# ONNX
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet_exporter():
    """The dynamo exporter logs progress and warnings (e.g. torchvision missing): keep quiet."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export",
                                              "torch.fx.experimental.symbolic_shapes",
                                              "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def graph_manifest(manifest, layer) -> dict[str, Any]:
    """The manifest as embedded in a graph: ``cam_layer`` is the layer the graph computes."""
    d = manifest.to_dict()
    d["cam_layer"] = layer
    return d


def onnx_model_proto(bundle, layer=None, fp16: bool = False, fold: bool = True,
                     resize: str = "gather", optimize: bool = True):
    """The fused graph of ``bundle`` as an ``onnx.ModelProto`` with rtseg metadata.

    ``fold`` / ``resize`` / ``optimize`` (the exporter's onnxscript optimizer) exist for the
    benchmark's ablation of the optimisation steps; the defaults are the fast graph.
    """
    import torch

    from rtseg import __version__
    from rtseg.fused import INPUT_NAME, OUTPUT_NAMES, FusedModule, example_frames, \
        resize_kernels, resolve_layer, trace_fused

    m = bundle.manifest
    layer = resolve_layer(m, layer)
    dtype = torch.float16 if fp16 else torch.float32
    gm = trace_fused(bundle, layer, dtype=dtype, device="cpu", fold=fold, resize=resize)
    frames = example_frames(m.input_size)
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("height"), 2: torch.export.Dim("width")}
    with _quiet_exporter(), resize_kernels(resize):
        try:
            prog = torch.onnx.export(FusedModule(gm), (frames,), dynamo=True, opset_version=OPSET,
                                     input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                                     dynamic_shapes=(dims,), optimize=optimize, verbose=False,
                                     external_data=False)
        except Exception as exc:  # exporter failures are long; keep the first line
            raise RuntimeError(f"ONNX export failed: {str(exc).strip().splitlines()[0][:300]}") from exc
    proto = prog.model_proto
    proto.producer_name = "rtseg"
    proto.producer_version = __version__
    proto.doc_string = (f"rtseg fused forward + Grad-CAM graph ({m.arch}, CAM layer {layer}, "
                        f"{'fp16' if fp16 else 'fp32'}): frames uint8 [B,H,W,3] BGR -> prob [B], "
                        f"cam [B,S,S], mask [B,S,S]")
    meta = {META_MANIFEST: json.dumps(graph_manifest(m, layer)), META_LAYER: str(layer),
            META_PRECISION: "fp16" if fp16 else "fp32", META_VERSION: __version__}
    del proto.metadata_props[:]
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    return proto


def save_proto(proto, path: Path) -> None:
    """Serialize an ONNX model to ``path`` (one file, weights inside)."""
    data = proto.SerializeToString()
    with open(path, "wb") as fh:
        fh.write(data)


def export_onnx(bundle, path: str | os.PathLike, layer=None, fp16: bool = False,
                check: bool = True, frame_hw: tuple[int, int] | None = None,
                cache: bool | str | os.PathLike = False) -> ExportedFile:
    """Write the fused graph of ``bundle`` to ``path`` atomically (checked first if ``check``).

    ``cache``: False = always trace and export; True (or a folder) = take the graph from the
    export cache (:func:`cached_onnx`, filled on a miss), which is keyed by everything the
    graph depends on, the source of the modules that build it included.
    """
    import shutil

    path = ensure_parent(Path(path))
    out = ExportedFile(path, "onnx-fp16" if fp16 else "onnx")
    src = None
    if cache is not False:
        cdir = cache_dir() if cache is True else Path(cache)
        try:
            ensure_parent(cdir / "probe")
        except UserError:
            log.warning("export cache %s is not writable: exporting without it", cdir)
        else:
            src = cached_onnx(bundle, layer, fp16, cache=cdir)
    if src is None:
        proto = onnx_model_proto(bundle, layer, fp16)
    with atomic_path(path) as tmp:
        if src is not None:
            shutil.copyfile(src, tmp)
        else:
            save_proto(proto, tmp)
        if check:
            out.checks = check_onnx(tmp, bundle, frame_hw=frame_hw)
    return out


def read_onnx_metadata(path: str | os.PathLike) -> tuple[Any, int | str, str]:
    """(manifest, layer, precision) embedded in an exported ``.onnx`` file."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise UserError(f"ONNX model not found: {path}")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise UserError(f"corrupt ONNX model {path}: {str(exc).strip().splitlines()[0][:200]}") from None
    meta = {p.key: p.value for p in proto.metadata_props}
    return manifest_from_meta(meta, str(path))


def manifest_from_meta(meta: dict[str, str], source: str) -> tuple[Any, int | str, str]:
    from rtseg.model import Manifest, check_layer

    if META_MANIFEST not in meta:
        raise UserError(f"{source} has no rtseg manifest (metadata '{META_MANIFEST}'): "
                        "export it with `rtseg export`")
    try:
        data = json.loads(meta[META_MANIFEST])
    except json.JSONDecodeError as exc:
        raise UserError(f"{source}: corrupt rtseg manifest metadata: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"{source}: corrupt rtseg manifest metadata: not a JSON object")
    manifest = Manifest.from_dict(data, source=f"{source} (embedded manifest)")
    layer = meta.get(META_LAYER, manifest.cam_layer)
    if isinstance(layer, str) and layer.lstrip("-").isdigit():
        layer = int(layer)
    layer = check_layer(manifest.arch, layer)
    return manifest, layer, meta.get(META_PRECISION, "fp32")


def check_onnx(path: str | os.PathLike, bundle, frame_hw: tuple[int, int] | None = None,
               tol: float | None = None) -> list[str]:
    """onnx.checker + one frame through ONNX Runtime (CPU) vs the eager Grad-CAM.

    Returns the checks that ran, as short strings for the export table; raises UserError
    when the graph is invalid or disagrees with eager beyond ``tol``.
    """
    import numpy as np
    import onnx

    from rtseg.runtime.onnx_backend import OnnxSegmenter
    from rtseg.runtime.torch_eager import EagerSegmenter
    from rtseg.synthetic import make_sample

    path = Path(path)
    checks = []
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise UserError(f"exported graph fails onnx.checker: {str(exc).strip().splitlines()[0][:200]}") from None
    checks.append("onnx.checker")
    manifest, layer, precision = read_onnx_metadata(path)
    h, w = frame_hw or (manifest.input_size, manifest.input_size)
    rgb = make_sample(np.random.default_rng(0), (h, w), polyp=True).image
    frame = np.ascontiguousarray(rgb[None, :, :, ::-1])
    seg = OnnxSegmenter(path, device="cpu")
    got = seg(frame)
    eager = EagerSegmenter(bundle, "cpu", layer)
    try:
        ref = eager(frame)
    finally:
        eager.close()
    d_cam = float(np.abs(got.cam - ref.cam).max())
    d_prob = float(np.abs(got.prob - ref.prob).max())
    tol = CHECK_TOL[precision] if tol is None else tol
    if not d_cam <= tol:
        raise UserError(f"exported graph disagrees with eager Grad-CAM: max |cam difference| "
                        f"{d_cam:.2e} > {tol:g} ({precision})")
    checks.append(f"ORT vs eager {w}x{h}: cam {d_cam:.1e}, prob {d_prob:.1e}")
    return checks


# --------------------------------------------------------------------------------------------
# TensorRT
# --------------------------------------------------------------------------------------------
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


def engine_sidecar(engine_path: str | os.PathLike) -> Path:
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


def read_engine_metadata(engine_path: str | os.PathLike) -> tuple[Any, int | str, str, dict]:
    """(manifest, layer, precision, sidecar dict) of a TensorRT engine built by rtseg."""
    side = engine_sidecar(engine_path)
    if not side.is_file():
        raise UserError(f"TensorRT engine {engine_path} has no {side.name} beside it "
                        "(build it with `rtseg export`)")
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"corrupt engine sidecar {side}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get(META_MANIFEST), dict):
        raise UserError(f"corrupt engine sidecar {side}: no manifest")
    meta = {META_MANIFEST: json.dumps(data[META_MANIFEST]), META_LAYER: str(data.get(META_LAYER, "")),
            META_PRECISION: str(data.get(META_PRECISION, "fp16"))}
    if not meta[META_LAYER]:
        del meta[META_LAYER]
    manifest, layer, precision = manifest_from_meta(meta, str(side))
    return manifest, layer, precision, data


# --------------------------------------------------------------------------------------------
# cache for on-the-fly exports
# --------------------------------------------------------------------------------------------
def cache_dir() -> Path:
    env = os.environ.get("RTSEG_CACHE")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rtseg"
    return base / "onnx"


def bundle_fingerprint(bundle, layer, fp16: bool) -> str:
    """A hash of everything the exported graph depends on."""
    import torch

    from rtseg import __version__

    h = hashlib.sha256()
    h.update(json.dumps(graph_manifest(bundle.manifest, layer), sort_keys=True).encode())
    h.update(f"{fp16}|{__version__}|{torch.__version__}|{OPSET}|{_tool_versions()}".encode())
    h.update(_source_hash().encode())
    for k, v in bundle.model.state_dict().items():  # the weights as loaded (fp32)
        h.update(k.encode())
        h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _tool_versions() -> str:
    out = []
    for name in ("onnx", "onnxscript"):
        try:
            mod = __import__(name)
            out.append(f"{name}={getattr(mod, '__version__', '?')}")
        except Exception:
            out.append(f"{name}=none")
    return ",".join(out)


def _source_hash() -> str:
    """Hash of the code that defines the graph, so a changed rtseg never reuses a stale export."""
    import rtseg

    root = Path(rtseg.__file__).parent
    h = hashlib.sha256()
    for name in ("fused.py", "exporter.py", "preprocess.py", "cam.py", "thresholds.py", "model.py",
                 "head.py", "active_area.py"):
        try:
            h.update((root / name).read_bytes())
        except OSError:
            h.update(name.encode())
    return h.hexdigest()


def cached_onnx(bundle, layer=None, fp16: bool = False, cache: str | os.PathLike | None = None) -> Path:
    """The fused graph of ``bundle`` in the cache folder (default :func:`cache_dir`),
    exported on first use."""
    from rtseg.fused import resolve_layer

    layer = resolve_layer(bundle.manifest, layer)
    # named by content only: the same weights + manifest share one file whatever the folder
    name = f"fused-L{layer}-{'fp16' if fp16 else 'fp32'}-{bundle_fingerprint(bundle, layer, fp16)}.onnx"
    path = (Path(cache) if cache is not None else cache_dir()) / name
    if path.is_file():
        return path
    log.info("exporting %s to %s (first use)", bundle.name, path)
    # tracing + export takes seconds (~9 s on 2 CPU cores): say so, or the command looks hung
    print(f"building the fused graph of {bundle.name} (layer {layer}, "
          f"{'fp16' if fp16 else 'fp32'}; first run, cached afterwards) ...",
          file=sys.stderr, flush=True)
    try:
        ensure_parent(path)
    except UserError:
        raise UserError(f"cannot write the ONNX cache folder {path.parent}: set RTSEG_CACHE to a "
                        "writable folder or export with `rtseg export`") from None
    export_onnx(bundle, path, layer, fp16, check=False)
    return path
