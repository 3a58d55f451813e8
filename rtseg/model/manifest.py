"""The manifest: every setting of a trained model (preprocessing, CAM layer, threshold policy,
clean-up, head, training record), and THE rule for a caller's overrides of the CAM layer and
threshold (:func:`resolve_layer`, :func:`resolve_threshold`)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from rtseg import __version__
from rtseg.errors import UserError
from rtseg.model.arch import IMAGENET_MEAN, IMAGENET_STD, check_layer, parse_layer
from rtseg.model.thresholds import ThresholdPolicy

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
    postprocess: tuple[str, ...] = ()  # mask clean-up steps (rtseg.model.postprocess), in order
    class_names: tuple[str, str] = ("non_polyp", "polyp")
    # crop every frame to the endoscope's lit field of view first (rtseg.model.active_area)
    active_area: bool = False
    # segmentation head refining the CAM (rtseg.model.head.HeadConfig as a dict); None = plain CAM
    head: dict[str, Any] | None = None
    # the frame call's moving average across a video's frames (rtseg.live.smoothing.CallSmoother;
    # 0 = every frame alone); chosen by cross-validation when the model is built
    call_smoothing: float = 0.0
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    rtseg_version: str = __version__

    def __post_init__(self) -> None:
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        self.class_names = tuple(self.class_names)
        from rtseg.model.postprocess import check_steps

        self.postprocess = check_steps(tuple(self.postprocess))
        if isinstance(self.threshold, dict):
            self.threshold = ThresholdPolicy.from_dict(self.threshold)
        elif isinstance(self.threshold, str):
            self.threshold = ThresholdPolicy.parse(self.threshold)
        if isinstance(self.cam_layer, str) and self.cam_layer.lstrip("-").isdigit():
            self.cam_layer = int(self.cam_layer)
        check_layer(self.arch, self.cam_layer)
        self.call_smoothing = float(self.call_smoothing)
        if self.head is not None:
            from rtseg.model.head import HeadConfig

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
        from rtseg.model.validate import validate_manifest_dict
        validate_manifest_dict(d, source)  # types, ranges, lengths: one line naming the field
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in d.items() if k in known})
        except UserError as exc:  # a field's own check (cam_layer for the arch, head...)
            if source in str(exc):
                raise
            raise UserError(f"{source}: {exc}") from None
        except (TypeError, ValueError, KeyError) as exc:
            raise UserError(f"{source} is invalid: {exc}") from None

    def replace(self, **changes: Any) -> "Manifest":
        return dataclasses.replace(self, **changes)


def resolve_layer(manifest: Manifest, layer: int | str | None = None) -> int | str:
    """The CAM layer: the manifest's unless ``layer`` overrides it ("14", 14, "head"); validated
    for the manifest's architecture. The one place this rule lives."""
    return check_layer(manifest.arch, manifest.cam_layer if layer is None else parse_layer(layer))


def resolve_threshold(manifest: Manifest, threshold: str | ThresholdPolicy | None = None
                      ) -> ThresholdPolicy:
    """The threshold policy: the manifest's unless ``threshold`` overrides it (a policy or its text)."""
    if threshold is None:
        return manifest.threshold
    if isinstance(threshold, ThresholdPolicy):
        return threshold
    return ThresholdPolicy.parse(str(threshold))


def resolve_call_smoothing(manifest: Manifest, override: float | None = None) -> float:
    """The video call's moving-average factor: the manifest's unless ``override`` (checked by the
    caller, :func:`rtseg.live.smoothing.check_call_smoothing`) replaces it."""
    return float(getattr(manifest, "call_smoothing", 0.0) if override is None else override)


def with_layer(manifest: Manifest, layer: int | str | None = None) -> Manifest:
    """``manifest`` with its CAM layer resolved by :func:`resolve_layer` (itself when unchanged)."""
    resolved = resolve_layer(manifest, layer)
    return manifest if resolved == manifest.cam_layer else manifest.replace(cam_layer=resolved)
