"""Export the fused graph (:mod:`rtseg.graph.fused`) to ONNX, and the cache of on-the-fly exports.

- :func:`export_onnx` writes one ``.onnx`` file (fp32, or fp16 inside with uint8 input and
  fp32/uint8 outputs kept) with the bundle's manifest in its metadata (key
  ``rtseg_manifest``, with ``cam_layer`` = the layer the graph computes, plus ``rtseg_layer``
  and ``rtseg_precision``). Written atomically; checked before it is renamed into place.
  The check is the caller's ``verify`` callable (``rtseg export`` passes
  :func:`rtseg.runtime.verify.check_onnx`): this package never imports the runtime.
- The metadata contract is :mod:`rtseg.graph.metadata`; TensorRT engines :mod:`rtseg.graph.tensorrt`.
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
from typing import Callable

from rtseg.atomic import atomic_path, check_free_space, ensure_parent
from rtseg.errors import UserError, first_line
from rtseg.graph.metadata import META_LAYER, META_MANIFEST, META_PRECISION, META_VERSION, graph_manifest

log = logging.getLogger(__name__)

OPSET = 18


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


def onnx_model_proto(bundle, layer=None, fp16: bool = False, fold: bool = True,
                     resize: str = "gather", optimize: bool = True):
    """The fused graph of ``bundle`` as an ``onnx.ModelProto`` with rtseg metadata.

    ``fold`` / ``resize`` / ``optimize`` (the exporter's onnxscript optimizer) exist for the
    benchmark's ablation of the optimisation steps; the defaults are the fast graph.
    """
    import torch

    from rtseg import __version__
    from rtseg.graph.fused import INPUT_NAME, OUTPUT_NAMES, FusedModule, example_frames, \
        resize_kernels, trace_fused
    from rtseg.model.manifest import resolve_layer

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
            raise RuntimeError(f"ONNX export failed: {first_line(exc, 300)}") from exc
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
                verify: Callable[..., list[str]] | None = None,
                frame_hw: tuple[int, int] | None = None,
                cache: bool | str | os.PathLike = False) -> ExportedFile:
    """Write the fused graph of ``bundle`` to ``path`` atomically, checked first by
    ``verify(tmp_path, bundle, frame_hw=frame_hw)`` (returns the checks that ran) when given.

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
    if src is not None:
        check_free_space(path, Path(src).stat().st_size)  # its size is known: say so now
    with atomic_path(path) as tmp:
        if src is not None:
            shutil.copyfile(src, tmp)
        else:
            save_proto(proto, tmp)
        if verify is not None:
            out.checks = verify(tmp, bundle, frame_hw=frame_hw)
    return out


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


def graph_modules() -> tuple:
    """The modules whose code defines the exported graph (their files key the export cache)."""
    from rtseg.graph import fold, fused, metadata, onnx
    from rtseg.model import active_area, arch, bundle, cam, head, manifest, preprocess, thresholds

    return (fold, fused, metadata, onnx, active_area, arch, bundle, cam, head, manifest, preprocess,
            thresholds)


def _source_hash() -> str:
    """Hash of the code that defines the graph, so a changed rtseg never reuses a stale export:
    the files of the imported modules themselves, wherever they live."""
    h = hashlib.sha256()
    for mod in graph_modules():
        h.update(mod.__name__.encode())
        h.update(Path(mod.__file__).read_bytes())
    return h.hexdigest()


def cached_onnx(bundle, layer=None, fp16: bool = False, cache: str | os.PathLike | None = None) -> Path:
    """The fused graph of ``bundle`` in the cache folder (default :func:`cache_dir`),
    exported on first use."""
    from rtseg.model.manifest import resolve_layer

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
    export_onnx(bundle, path, layer, fp16)
    return path
