"""Backbones: :data:`ARCHS` (efficientnet-b0..b3 from efficientnet-pytorch, random init: the
paper's set-up; efficientnet-lite1 from efficientnet-lite-pytorch with installed ImageNet weights),
the normalisation each one's weights expect, and CAM layer checks (a block index or "head")."""

from __future__ import annotations

from dataclasses import dataclass

from rtseg.errors import UserError

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
