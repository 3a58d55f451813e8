"""Runtime backends behind one interface: :class:`~rtseg.runtime.base.Segmenter`.

``create_segmenter(model, backend)`` returns a segmenter for a bundle folder (or the default
model when ``model`` is None); see :mod:`rtseg.runtime.base` for the call convention.
"""

from __future__ import annotations

from rtseg.runtime.base import Segmenter, SegOutput, check_frames

__all__ = ["Segmenter", "SegOutput", "check_frames", "create_segmenter", "available_backends"]


def available_backends() -> list[str]:
    return ["torch"]


def create_segmenter(model=None, backend: str = "auto", device: str = "auto",
                     fp16: bool = False, layer=None) -> Segmenter:
    """A segmenter for ``model`` (bundle folder; None = default shipped model)."""
    from rtseg.model import resolve_bundle, resolve_device
    from rtseg.runtime.torch_eager import EagerSegmenter

    dev = resolve_device(device)
    return EagerSegmenter(resolve_bundle(model, "cpu"), dev, layer)
