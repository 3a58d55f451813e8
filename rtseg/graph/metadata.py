"""The contract between an exported graph and whoever runs it: the manifest, the CAM layer and the
precision stored in the file's metadata (ONNX ``metadata_props``; a ``.json`` sidecar beside a
TensorRT engine, which carries none), and reading them back.

Keys: ``rtseg_manifest`` (the bundle's manifest with ``cam_layer`` = the layer the graph computes),
``rtseg_layer``, ``rtseg_precision``, ``rtseg_version``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rtseg.errors import UserError, first_line

META_MANIFEST = "rtseg_manifest"
META_LAYER = "rtseg_layer"
META_PRECISION = "rtseg_precision"
META_VERSION = "rtseg_version"


def graph_manifest(manifest, layer) -> dict[str, Any]:
    """The manifest as embedded in a graph: ``cam_layer`` is the layer the graph computes."""
    d = manifest.to_dict()
    d["cam_layer"] = layer
    return d


def read_onnx_metadata(path: str | os.PathLike) -> tuple[Any, int | str, str]:
    """(manifest, layer, precision) embedded in an exported ``.onnx`` file."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise UserError(f"ONNX model not found: {path}")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise UserError(f"corrupt ONNX model {path}: {first_line(exc)}") from None
    meta = {p.key: p.value for p in proto.metadata_props}
    return manifest_from_meta(meta, str(path))


def manifest_from_meta(meta: dict[str, str], source: str) -> tuple[Any, int | str, str]:
    from rtseg.model.manifest import Manifest, resolve_layer

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
    layer = resolve_layer(manifest, meta.get(META_LAYER))
    return manifest, layer, meta.get(META_PRECISION, "fp32")


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
