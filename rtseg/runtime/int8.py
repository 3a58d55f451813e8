"""The int8 graph from real frames, kept only where its quality holds.

- :class:`ViewReader` feeds the quantizer's calibration exactly what the graph sees at run time:
  each frame goes through the segmenter's own view (:meth:`rtseg.runtime.active.ViewSegmenter.views`:
  the active area cut out and resized on the CPU, tiles in tiles mode), not a re-implementation.
- :func:`compare` is the quality gate: held-out frames through the fp32 and the int8 segmenter
  (the same :func:`rtseg.runtime.create_segmenter` path as every command), the mean Dice between
  their masks (over the frames where either has a mask: frames both leave empty agree and are
  not counted) and the share of frames whose call (:func:`rtseg.model.call.is_polyp`) agrees.
  The rule: Dice at least ``1 - DICE_TOL`` and calls disagreeing on at most ``CALL_TOL`` of frames.
- :func:`export_int8` quantizes (:func:`rtseg.graph.quantize.quantize_graph`), checks the file,
  runs the gate and puts the file in place only when it passes (or ``force``): written
  atomically, a failing gate leaves nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from rtseg.errors import UserError

#: the gate: int8 masks within this Dice of fp32's, calls disagreeing on at most this share
DICE_TOL = 0.01
CALL_TOL = 0.005


class QualityGateFailed(UserError):
    """The int8 graph moved masks or calls beyond the gate (exit code 1: not a usage error)."""

    exit_code = 1


def frame_files(values: Sequence[str | os.PathLike] | None, what: str) -> list[Path]:
    """Image files from folders (recursive) and files, in the given order, duplicates dropped."""
    from rtseg.imageio import IMAGE_EXTENSIONS, list_images

    out: list[Path] = []
    for v in values or []:
        p = Path(v)
        if p.is_dir():
            out += list_images(p, what)
        elif p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
            out.append(p)
        elif p.is_file():
            raise UserError(f"{what} {p} is not an image ({', '.join(IMAGE_EXTENSIONS)})")
        else:
            raise UserError(f"{what} not found: {p}")
    return list(dict.fromkeys(out))


def check_disjoint(calibration: Iterable[Path], check: Iterable[Path]) -> None:
    both = {p.resolve() for p in calibration} & {p.resolve() for p in check}
    if both:
        raise UserError(f"--check frames must be held out from --calibration: {len(both)} "
                        f"frame(s) in both (e.g. {sorted(both)[0]})")


def read_frame(path: Path) -> np.ndarray | None:
    """A frame as the live loop gets it (BGR uint8), or None when unreadable."""
    from rtseg.imageio import try_read_image

    rgb = try_read_image(path)
    return None if rgb is None else np.ascontiguousarray(rgb[:, :, ::-1])


class ViewReader:
    """An ONNX Runtime ``CalibrationDataReader``: one frame's network view(s) per call."""

    def __init__(self, segmenter, paths: Sequence[Path]) -> None:
        self.views = segmenter.views  # ViewSegmenter.views: the runtime's own path
        self.paths = list(paths)
        self.skipped: list[Path] = []
        self._next = 0

    def get_next(self) -> dict | None:
        while self._next < len(self.paths):
            path = self.paths[self._next]
            self._next += 1
            frame = read_frame(path)
            if frame is None:
                self.skipped.append(path)
                continue
            views, _ = self.views(frame[None])
            return {"frames": views}
        return None

    def rewind(self) -> None:
        self._next = 0
        self.skipped = []


@dataclass
class GateResult:
    frames: int  # frames compared
    masked: int  # frames where either graph drew a mask
    dice: float  # mean Dice(int8 mask, fp32 mask) over the masked frames (1.0 when none)
    agreement: float  # share of frames called alike
    dice_tol: float = DICE_TOL
    call_tol: float = CALL_TOL
    skipped: list[Path] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        eps = 1e-9  # 1 - 0.995 is 0.0050000000000000044 in floating point
        return self.dice >= 1.0 - self.dice_tol - eps and 1.0 - self.agreement <= self.call_tol + eps

    def line(self) -> str:
        return (f"int8 vs fp32 on {self.frames} held-out frames: mask Dice {self.dice:.4f} "
                f"(need >= {1 - self.dice_tol:.4f}, {self.masked} frames with a mask), calls "
                f"agree on {100 * self.agreement:.2f}% (need >= {100 * (1 - self.call_tol):.2f}%)")


def compare(reference, candidate, paths: Sequence[Path], dice_tol: float = DICE_TOL,
            call_tol: float = CALL_TOL) -> GateResult:
    """The gate's figures for ``candidate`` against ``reference`` (two segmenters) on ``paths``."""
    from rtseg.evaluate.metrics import image_scores
    from rtseg.model.call import is_polyp

    dices, agree, skipped = [], [], []
    for path in paths:
        frame = read_frame(path)
        if frame is None:
            skipped.append(path)
            continue
        ref, got = reference(frame[None]), candidate(frame[None])
        agree.append(is_polyp(float(ref.prob[0])) == is_polyp(float(got.prob[0])))
        if ref.mask.any() or got.mask.any():
            dices.append(image_scores(got.mask[0], ref.mask[0])["dice"])
    if not agree:
        raise UserError("no readable frame among the --check frames")
    return GateResult(len(agree), len(dices), float(np.mean(dices)) if dices else 1.0,
                      float(np.mean(agree)), dice_tol, call_tol, skipped)


def export_int8(fp32_path: Path, out_path: Path, calibration: Sequence[Path],
                check: Sequence[Path], config=None, force: bool = False,
                verify: Callable[..., list[str]] | None = None, bundle=None,
                dice_tol: float | None = None, call_tol: float | None = None):
    """Quantize ``fp32_path`` to ``out_path`` if the gate passes (or ``force``).

    Returns (:class:`rtseg.graph.onnx.ExportedFile`, :class:`GateResult`); raises
    :class:`QualityGateFailed` (nothing written) when the gate fails without ``force``.
    """
    from rtseg.atomic import atomic_path
    from rtseg.graph.onnx import ExportedFile
    from rtseg.graph.quantize import Int8Config, quantize_graph
    from rtseg.imageio import warn_skipped
    from rtseg.runtime import create_segmenter

    check_disjoint(calibration, check)
    config = config or Int8Config()
    dice_tol = DICE_TOL if dice_tol is None else dice_tol
    call_tol = CALL_TOL if call_tol is None else call_tol
    reference = create_segmenter(fp32_path, "onnxruntime", "cpu")
    reader = ViewReader(reference, calibration)
    out = ExportedFile(Path(out_path), "onnx-int8")
    with atomic_path(out_path) as tmp:
        try:
            names = quantize_graph(fp32_path, tmp, reader, config)
        except UserError:
            if len(reader.skipped) == len(reader.paths):
                raise UserError("no readable frame among the --calibration frames") from None
            raise
        warn_skipped(reader.skipped, "calibration image")
        if verify is not None:
            out.checks = verify(tmp, bundle)
        gate = compare(reference, create_segmenter(tmp, "onnxruntime", "cpu"), check,
                       dice_tol, call_tol)
        warn_skipped(gate.skipped, "--check image")
        out.checks += [f"{len(names)} convs int8 ({config.describe()}), calibrated on "
                       f"{len(reader.paths) - len(reader.skipped)} frames",
                       f"gate: Dice {gate.dice:.4f}, calls agree {100 * gate.agreement:.2f}% on "
                       f"{gate.frames} frames" + ("" if gate.passed else " (FAILED, forced)")]
        if not gate.passed and not force:
            raise QualityGateFailed(f"int8 graph not written: it fails the quality gate: "
                                    f"{gate.line()}")
    return out, gate
