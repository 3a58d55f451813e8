"""``rtseg predict``: masks (and heat maps) for a folder of images.

For every image below ``images_dir`` (recursive, natural order):

- ``OUT/<relative path>.png``: the mask, 0/255 single-channel PNG at the image's own size
  (same relative folder and stem as the image, extension ``.png``);
- with ``heatmaps=True``, ``OUT/heatmaps/<relative path>.png``: the CAM as a JET colour map
  blended over the image;
- ``OUT/predictions.csv``: ``path,prob`` (the polyp probability of each image; ``path`` as found
  below ``images_dir``).

Probabilities, CAMs and masks come from the one frame pipeline (:class:`rtseg.pipeline.runner.Runner`,
the same as ``rtseg stream`` and ``rtseg batch``; the manifest's tiles mode is handled by the
segmenter), with the manifest's CAM layer and threshold policy unless ``layer`` / ``threshold``
override them. Every file is written
atomically. Unreadable images are skipped with one warning.
"""

from __future__ import annotations

import contextlib
import csv
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from rtseg.atomic import atomic_open
from rtseg.errors import UserError
from rtseg.model.call import is_polyp
from rtseg.model.thresholds import ThresholdPolicy

PREDICTIONS_CSV = "predictions.csv"
HEATMAP_DIR = "heatmaps"
TINY_IMAGE = 32  # images with a side below this (pixels) get a warning: upscaled, not meaningful


def resolve_settings(bundle, layer: int | str | None = None,
                     threshold: str | ThresholdPolicy | None = None
                     ) -> tuple[int | str, ThresholdPolicy]:
    """(CAM layer, threshold policy): the manifest's unless overridden; both validated."""
    from rtseg.model.manifest import resolve_layer, resolve_threshold

    return resolve_layer(bundle.manifest, layer), resolve_threshold(bundle.manifest, threshold)


def check_out_dir(path: str | os.PathLike) -> Path:
    """UserError unless ``path`` is (or can be created as) a writable folder; creates nothing.

    Commands call it before any work, so a bad ``--out`` fails in a second, not after a run.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"output folder is a file: {path}")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UserError(f"cannot create folder {path}: {probe} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to output folder {path}: permission denied on {probe}")
    return path


def prepare_out_dir(path: str | os.PathLike) -> Path:
    """Create the output folder; UserError if it cannot be created or written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"output folder is a file: {path}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output folder {path}: {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to output folder {path}: permission denied")
    return path


def output_name(image: Path, root: Path) -> Path:
    """Relative output name of an image: its path below ``root`` with extension ``.png``."""
    try:
        rel = image.relative_to(root)
    except ValueError:
        rel = Path(image.name)
    return rel.with_suffix(".png")


def check_unique_outputs(images: Sequence[Path], root: Path, out: Path | None = None) -> None:
    """UserError if two images would write the same mask file (``a.jpg`` and ``a.png``), or
    if a mask would overwrite an input image (``out`` is the images folder)."""
    seen: dict[str, Path] = {}
    inputs = {os.path.normcase(os.path.abspath(p)) for p in images}
    for p in images:
        key = os.path.normcase(str(output_name(p, root)))
        if key in seen:
            raise UserError(f"images {seen[key]} and {p} would both write the mask "
                            f"{output_name(p, root)}: rename one of them")
        seen[key] = p
        if out is not None:
            for target in (out / output_name(p, root), out / HEATMAP_DIR / output_name(p, root)):
                if os.path.normcase(os.path.abspath(target)) in inputs:
                    raise UserError(f"--out {out} would overwrite the input image {target}: "
                                    "choose another output folder")


@dataclass
class ImagePrediction:
    path: Path
    image: np.ndarray  # RGB uint8 [H, W, 3]
    prob: float  # polyp probability
    cam: np.ndarray  # float32 [S, S] in [0, 1] (tiles mode: [2S, 2S]; cropped: [H, W])
    mask: np.ndarray  # bool [H, W]


def predict_segmenter(bundle, layer: int | str | None = None):
    """The segmenter ``rtseg predict`` and ``rtseg eval`` run: the bundle in fp32 on its device
    (the eager reference on CPU), behind the same active-area view as every other command."""
    from rtseg.runtime import create_segmenter

    device = str(next(bundle.model.parameters()).device)
    return create_segmenter(bundle, "torch", device, False, layer)


def iter_predictions(bundle, paths: Sequence[Path], layer: int | str | None = None,
                     threshold: str | ThresholdPolicy | None = None, batch_size: int = 16,
                     skipped: list[Path] | None = None, segmenter=None) -> Iterator[ImagePrediction]:
    """Predict ``paths`` ``batch_size`` images at a time (memory stays bounded), through the
    one frame pipeline (:class:`rtseg.pipeline.runner.Runner`, no smoothing: stills).

    Unreadable images are left out and appended to ``skipped`` (if given). ``segmenter``: run
    this one (its layer) instead of :func:`predict_segmenter`.
    """
    from rtseg.imageio import try_read_image
    from rtseg.model.cam import place_cam
    from rtseg.pipeline.runner import Runner

    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, not {batch_size}")
    lay, policy = resolve_settings(bundle, layer, threshold)
    seg = segmenter if segmenter is not None else predict_segmenter(bundle, lay)
    runner = Runner(seg, policy=policy, steps=bundle.manifest.postprocess)
    tiny: list[Path] = []
    try:
        for i in range(0, len(paths), batch_size):
            chunk, images = [], []
            for p in paths[i:i + batch_size]:
                img = try_read_image(p)
                if img is None:
                    if skipped is not None:
                        skipped.append(Path(p))
                    continue
                chunk.append(Path(p))
                images.append(img)
                if min(img.shape[:2]) < TINY_IMAGE and len(tiny) < 1000:
                    tiny.append(Path(p))
            if not images:
                continue
            results = runner([np.ascontiguousarray(im[..., ::-1]) for im in images])  # BGR, as frames
            for p, img, r in zip(chunk, images, results):
                cam = r.cam if r.box.covers(img.shape[:2]) else place_cam(r.cam, img.shape[:2], r.box)
                yield ImagePrediction(p, img, r.prob, cam, r.mask.astype(bool))
            if tiny:
                names = ", ".join(str(t) for t in tiny[:3]) + (" ..." if len(tiny) > 3 else "")
                warnings.warn(f"{len(tiny)} image(s) smaller than {TINY_IMAGE} px on a side, upscaled "
                              f"to {bundle.manifest.input_size}: their probability and mask mean "
                              f"little ({names})", stacklevel=2)
                tiny = []
    finally:
        if segmenter is None:
            seg.close()


def write_mask(path: str | os.PathLike, mask: np.ndarray) -> None:
    """A bool mask as a 0/255 single-channel PNG, atomically."""
    from rtseg.imageio import write_image

    write_image(path, np.asarray(mask, bool).astype(np.uint8) * 255, "mask")


def write_predictions_csv(path: str | os.PathLike, rows: Sequence[tuple[str, float]]) -> None:
    with atomic_open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(("path", "prob"))
        for name, prob in rows:
            w.writerow((name, f"{prob:.6f}"))


def merged_rows(path: Path, rows: Sequence[tuple[str, float]]) -> list[tuple[str, float]]:
    """``rows`` added to those already in the predictions CSV ``path`` (a run that stopped
    early never leaves fewer rows than an earlier run wrote; a row of this run wins)."""
    old: dict[str, float] = {}
    with contextlib.suppress(OSError, ValueError, KeyError, csv.Error, UnicodeDecodeError):
        with open(path, newline="", encoding="utf-8") as fh:
            for r in csv.DictReader(fh):
                old[r["path"]] = float(r["prob"])
    new = dict(rows)
    return [(k, new.pop(k, v)) for k, v in old.items()] + list(new.items())


@dataclass
class PredictSummary:
    out: Path
    n_images: int
    n_polyp: int  # images called polyp (rtseg.model.call.is_polyp)
    layer: int | str
    threshold: str
    csv: Path
    skipped: list[Path] = field(default_factory=list)
    heatmaps: Path | None = None
    interrupted: bool = False  # stopped early (``stop()``): masks and the CSV cover n_images
    n_total: int = 0  # images found
    n_csv_rows: int = 0  # rows in predictions.csv (interrupted: an earlier run's rows kept)


def predict_folder(bundle, images_dir: str | os.PathLike, out_dir: str | os.PathLike,
                   layer: int | str | None = None,
                   threshold: str | ThresholdPolicy | None = None, heatmaps: bool = False,
                   batch_size: int = 16,
                   progress: Callable[[int], None] | None = None,
                   stop: Callable[[], bool] | None = None, segmenter=None) -> PredictSummary:
    """Write a mask per image (and heat maps) plus ``predictions.csv`` into ``out_dir``.

    ``progress(n)`` is called with the number of images handled since its last call. When
    ``stop()`` turns true (a signal), no further image is started: ``predictions.csv`` is
    written for the images done so far (their masks are complete) and the summary says
    ``interrupted``. ``segmenter``: run this one (see :func:`iter_predictions`). A run that fails
    before writing anything removes the ``out_dir`` it created.
    """
    from rtseg.evaluate.figure import heatmap_overlay, write_png
    from rtseg.imageio import list_images

    root = Path(images_dir)
    paths = list_images(root, "images folder")
    lay, policy = resolve_settings(bundle, layer, threshold)  # bad options fail before any work
    check_unique_outputs(paths, root, Path(out_dir))
    created = not Path(out_dir).exists()
    out = prepare_out_dir(out_dir)
    skipped: list[Path] = []
    rows: list[tuple[str, float]] = []
    interrupted = False
    try:
        for pred in iter_predictions(bundle, paths, lay, policy, batch_size, skipped, segmenter):
            if stop is not None and stop():
                interrupted = True
                break
            name = output_name(pred.path, root)
            write_mask(out / name, pred.mask)
            if heatmaps:
                write_png(out / HEATMAP_DIR / name, heatmap_overlay(pred.image, pred.cam))
            rows.append((str(pred.path), pred.prob))
            if progress is not None:
                progress(1)
        if skipped and progress is not None:
            progress(len(skipped))
        if not rows and not interrupted:
            raise UserError(f"no readable image in {root} ({len(skipped)} unreadable)")
    except BaseException:
        if created and not rows:
            _remove_empty_tree(out)
        elif rows:  # a full disk, a crash: the masks finished keep their rows (best effort)
            with contextlib.suppress(Exception):
                write_predictions_csv(out / PREDICTIONS_CSV,
                                      merged_rows(out / PREDICTIONS_CSV, rows))
        raise
    if skipped:
        names = ", ".join(str(p) for p in skipped[:5])
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        warnings.warn(f"skipped {len(skipped)} unreadable image(s): {names}{more}", stacklevel=2)
    csv_path = out / PREDICTIONS_CSV
    csv_rows = merged_rows(csv_path, rows) if interrupted else rows
    write_predictions_csv(csv_path, csv_rows)
    return PredictSummary(out, len(rows), sum(is_polyp(p) for _, p in rows), lay, str(policy),
                          csv_path, skipped, out / HEATMAP_DIR if heatmaps else None,
                          interrupted, len(paths), len(csv_rows))


def _remove_empty_tree(path: Path) -> None:
    """Remove ``path`` and the folders below it if they hold no file (never a file)."""
    for d in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            d.rmdir()
    with contextlib.suppress(OSError):
        path.rmdir()
