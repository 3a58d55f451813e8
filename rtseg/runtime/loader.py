"""The one model loader of the live loop, ``rtseg bench`` and ``rtseg batch``: a segmenter for a
model path (None = the shipped default model), the backend checked first, and the temporary
untrained fallback for a checkout without the default model."""

from __future__ import annotations

import tempfile
from pathlib import Path

from rtseg.errors import UserError
from rtseg.runtime import BACKENDS, available_backends, create_segmenter


def default_model_available() -> bool:
    from rtseg.model.bundle import default_bundle_path
    from rtseg.model.manifest import MANIFEST

    return (default_bundle_path() / MANIFEST).is_file()


def untrained_fallback_bundle(input_size: int = 224, calibrate: bool = True, say=print):
    """TEMPORARY: used only while rtseg ships no trained default model. Remove with it.

    Prints one line saying so, and returns ``(bundle folder, keep-alive handle)``: a random-init
    EfficientNet-b1 whose BatchNorm statistics are re-estimated on synthetic frames (so its
    CAMs are not degenerate), saved to a temporary folder so that every runtime backend can load
    it. It is NOT a model: it finds nothing meaningful, and the loop labels its output
    "UNTRAINED" on every frame. The folder is deleted when the handle is garbage-collected.
    """
    import torch

    from rtseg.model.bundle import new_bundle, save_bundle
    from rtseg.model.preprocess import images_to_input
    from rtseg.synthetic import make_dataset
    from rtseg.train.calibrate import reestimate_bn

    say("warning: no trained model is shipped with rtseg yet and no --model was given: "
        "using an UNTRAINED network (BatchNorm calibrated on synthetic frames); "
        "its masks mean nothing")
    torch.manual_seed(0)
    bundle = new_bundle(input_size=input_size)
    if calibrate:
        samples = make_dataset(8, 8, size=(input_size, input_size), seed=0)
        x = images_to_input([s.image for s in samples], bundle.manifest)
        reestimate_bn(bundle.model, (x[:8], x[8:]))
    tmp = tempfile.TemporaryDirectory(prefix="rtseg-untrained-")
    path = save_bundle(bundle, Path(tmp.name) / "untrained")
    return str(path), tmp


def backends_here(device: str = "auto") -> list[str]:
    """``rtseg.runtime.available_backends`` for ``device``, as a list."""
    return list(available_backends(device))


def check_backend(backend: str, device: str = "auto") -> None:
    known = set(BACKENDS) | set(backends_here(device)) | {"auto"}
    if backend not in known:
        raise UserError(f"backend '{backend}' is not available here (available: "
                        f"{', '.join(backends_here(device))}; or auto)")


def create(model, backend: str = "auto", device: str = "auto", fp16: bool | None = None,
           layer=None, threads: int = 0):
    """``rtseg.runtime.create_segmenter``; ``threads`` (CPU threads, onnxruntime) when nonzero."""
    options = {"threads": threads} if threads else {}
    return create_segmenter(model, backend, device, fp16, layer, **options)


def load_segmenter(model: str | None, backend: str = "auto", device: str = "auto",
                   fp16: bool | None = None, layer=None, say=print, threads: int = 0):
    """(segmenter, untrained?) for ``model``; None = the default model, or the fallback."""
    check_backend(backend, device)
    if model is None and not default_model_available():
        path, keep = untrained_fallback_bundle(say=say)
        seg = create(path, backend, device, fp16, layer, threads)
        seg._rtseg_keep = keep  # the temporary bundle folder lives as long as the segmenter
        return seg, True
    return create(model, backend, device, fp16, layer, threads), False
