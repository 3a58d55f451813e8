"""The one model loader of the live loop, ``rtseg bench`` and ``rtseg batch``: a segmenter for a
model path (None = the default model shipped in ``rtseg/assets``), the backend checked first. A
missing model is a :class:`~rtseg.errors.UserError` (one ``error:`` line), never a stand-in."""

from __future__ import annotations

from rtseg.errors import UserError
from rtseg.runtime import BACKENDS, available_backends, create_segmenter


def default_model_available() -> bool:
    from rtseg.model.bundle import default_bundle_path
    from rtseg.model.manifest import MANIFEST

    return (default_bundle_path() / MANIFEST).is_file()


def backends_here(device: str = "auto") -> list[str]:
    """``rtseg.runtime.available_backends`` for ``device``, as a list."""
    return list(available_backends(device))


def check_backend(backend: str, device: str = "auto") -> None:
    known = set(BACKENDS) | set(backends_here(device)) | {"auto"}
    if backend not in known:
        raise UserError(f"backend '{backend}' is not available here (available: "
                        f"{', '.join(backends_here(device))}; or auto)")


def create(model, backend: str = "auto", device: str = "auto", fp16: bool | None = None,
           layer=None, threads: int = 0, overlapped: bool = False):
    """``rtseg.runtime.create_segmenter``; ``threads`` (CPU threads, onnxruntime) when nonzero.

    ``overlapped``: the segmenter shares the CPU with other stages running at the same time
    (decode, drawing, recording): onnxruntime's intra-op threads then sleep between operators
    instead of spin-waiting, which would take the cores those stages need."""
    options: dict = {"threads": threads} if threads else {}
    if overlapped:
        options["spin"] = False
    return create_segmenter(model, backend, device, fp16, layer, **options)


def load_segmenter(model: str | None, backend: str = "auto", device: str = "auto",
                   fp16: bool | None = None, layer=None, say=print, threads: int = 0,
                   overlapped: bool = False):
    """The segmenter for ``model`` (None = the shipped default model); ``overlapped``: see
    :func:`create`."""
    check_backend(backend, device)
    check_model(model)
    return create(model, backend, device, fp16, layer, threads, overlapped)


def check_model(model) -> None:
    """UserError when no ``model`` is given and the shipped default model is missing."""
    if model is None and not default_model_available():
        from rtseg.model.bundle import default_bundle_path

        raise UserError(f"the default model is missing from this installation "
                        f"({default_bundle_path()}): reinstall rtseg or pass --model")
