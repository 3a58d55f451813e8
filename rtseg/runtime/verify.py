"""The check of an exported graph: ``onnx.checker`` and one frame through ONNX Runtime against the
eager Grad-CAM. It lives with the runtime (it runs two segmenters); ``rtseg export`` hands it to
:func:`rtseg.graph.onnx.export_onnx` as its ``verify`` callable."""

from __future__ import annotations

import os
from pathlib import Path

from rtseg.errors import UserError, first_line
from rtseg.graph.metadata import read_onnx_metadata

#: tolerances of the post-export check against the eager Grad-CAM (max |cam difference|):
#: loose enough for any sane model in fp32 (measured ~3e-5 on tests' models), and for fp16
#: int8: any finite CAM passes here (its quality is judged on real frames by the quality gate of
#: rtseg.runtime.int8; a synthetic frame says nothing about it)
CHECK_TOL = {"fp32": 1e-3, "fp16": 0.1, "int8": 1.0}


def check_onnx(path: str | os.PathLike, bundle, frame_hw: tuple[int, int] | None = None,
               tol: float | None = None) -> list[str]:
    """onnx.checker + one frame through ONNX Runtime (CPU) vs the eager Grad-CAM.

    Returns the checks that ran, as short strings for the export table; raises UserError
    when the graph is invalid or disagrees with eager beyond ``tol``.
    """
    import numpy as np
    import onnx

    from rtseg.runtime.onnx_backend import OnnxSegmenter
    from rtseg.runtime.torch_eager import EagerSegmenter
    from rtseg.synthetic import make_sample

    path = Path(path)
    checks = []
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise UserError(f"exported graph fails onnx.checker: {first_line(exc)}") from None
    checks.append("onnx.checker")
    manifest, layer, precision = read_onnx_metadata(path)
    h, w = frame_hw or (manifest.input_size, manifest.input_size)
    rgb = make_sample(np.random.default_rng(0), (h, w), polyp=True).image
    frame = np.ascontiguousarray(rgb[None, :, :, ::-1])
    seg = OnnxSegmenter(path, device="cpu")
    got = seg(frame)
    eager = EagerSegmenter(bundle, "cpu", layer)
    try:
        ref = eager(frame)
    finally:
        eager.close()
    d_cam = float(np.abs(got.cam - ref.cam).max())
    d_prob = float(np.abs(got.prob - ref.prob).max())
    tol = CHECK_TOL[precision] if tol is None else tol
    if not d_cam <= tol:
        raise UserError(f"exported graph disagrees with eager Grad-CAM: max |cam difference| "
                        f"{d_cam:.2e} > {tol:g} ({precision})")
    checks.append(f"ORT vs eager {w}x{h}: cam {d_cam:.1e}, prob {d_prob:.1e}")
    return checks
