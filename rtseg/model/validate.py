"""Manifest validation in one place: types, ranges and lengths of every field a bundle needs.

:func:`validate_manifest_dict` runs when a manifest is read (``Manifest.from_dict``: bundle
folders, exported ONNX graphs and engines), before any command does work, so a hand-edited
``"input_size": "224px"`` or a 2-value ``mean`` is one ``error:`` line naming the field and the
file (exit 2), never a traceback deep in preprocessing. Fields it does not know (newer
settings such as ``head`` or ``active_area``) are accepted and left to their users.
"""

from __future__ import annotations

import math
from typing import Any

from rtseg.errors import UserError

INPUT_SIZE_RANGE = (32, 2048)
#: the largest ``call_smoothing``: its time constant of 1 / (1 - a) frames must stay short, or a
#: polyp that comes into view would be called late (0.8: 5 frames, 0.2 s at 25 fps)
MAX_CALL_SMOOTHING = 0.8


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _fail(source: str, name: str, what: str, value: Any) -> None:
    raise UserError(f"{source}: field '{name}' must be {what}, not {_show(value)}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_triple(d: dict, source: str, name: str, positive: bool) -> None:
    v = d[name]
    what = "a list of 3 finite numbers" + (" above 0" if positive else "")
    if not isinstance(v, (list, tuple)) or len(v) != 3 or not all(_is_number(x) for x in v):
        _fail(source, name, what, v)
    if positive and not all(x > 0 for x in v):
        _fail(source, name, what, v)


def check_input_size(size: Any, option: str = "--size") -> int:
    """A network input size option in the manifest's range (checked before any work)."""
    lo, hi = INPUT_SIZE_RANGE
    if not _is_int(size) or not lo <= size <= hi:
        raise UserError(f"{option} must be {lo}..{hi} pixels (a model's input_size), "
                        f"not {_show(size)}")
    return size


def _check_threshold(t: dict, source: str) -> None:
    from rtseg.model.thresholds import KINDS

    if t.get("kind") not in KINDS:
        _fail(source, "threshold.kind", " or ".join(KINDS), t.get("kind"))
    for key in ("lo", "hi"):
        v = t.get(key)
        if v is not None and (not _is_number(v) or not 0.0 <= v <= 1.0):
            _fail(source, f"threshold.{key}", "a number in [0, 1]", v)


def validate_manifest_dict(d: dict, source: str) -> None:
    """Raise :class:`UserError` (one line: the field and ``source``) for a malformed manifest.

    Only fields present in ``d`` are checked (missing required fields are reported by the
    caller); unknown fields are accepted.
    """
    if not isinstance(d, dict):
        raise UserError(f"{source}: a manifest must be a JSON object, not {type(d).__name__}")
    lo, hi = INPUT_SIZE_RANGE
    if "arch" in d and (not isinstance(d["arch"], str) or not d["arch"].strip()):
        _fail(source, "arch", "a string such as 'efficientnet-b1'", d["arch"])
    if "input_size" in d:
        v = d["input_size"]
        if not _is_int(v) or not lo <= v <= hi:
            _fail(source, "input_size", f"a whole number of pixels {lo}..{hi}", v)
    if "mean" in d:
        _check_triple(d, source, "mean", positive=False)
    if "std" in d:
        _check_triple(d, source, "std", positive=True)
    if "cam_layer" in d:
        v = d["cam_layer"]
        ok = _is_int(v) or (isinstance(v, str) and (v.strip().lower() == "head"
                                                    or v.strip().isdigit()))
        if not ok:
            _fail(source, "cam_layer", "a block index or 'head'", v)
    if "threshold" in d and not isinstance(d["threshold"], (str, dict)):
        _fail(source, "threshold", "a policy string ('above 0.5') or object", d["threshold"])
    if isinstance(d.get("threshold"), dict):
        _check_threshold(d["threshold"], source)
    if d.get("head") is not None and not isinstance(d["head"], dict):
        _fail(source, "head", "an object (the head's settings) or null", d["head"])
    if "class_names" in d:
        v = d["class_names"]
        if not isinstance(v, (list, tuple)) or len(v) != 2 or not all(isinstance(x, str) for x in v):
            _fail(source, "class_names", "a list of 2 strings", v)
    for name in ("fov_mask", "tiles"):
        if name in d and not isinstance(d[name], bool):
            _fail(source, name, "true or false", d[name])
    if "postprocess" in d:
        v = d["postprocess"]
        if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
            _fail(source, "postprocess", "a list of step names", v)
    if "call_smoothing" in d:
        v = d["call_smoothing"]
        if not _is_number(v) or not 0.0 <= v <= MAX_CALL_SMOOTHING:
            _fail(source, "call_smoothing", f"a number in [0, {MAX_CALL_SMOOTHING}]", v)
    for name in ("training", "metrics"):
        if name in d and not isinstance(d[name], dict):
            _fail(source, name, "an object", d[name])
    if "rtseg_version" in d and not isinstance(d["rtseg_version"], str):
        _fail(source, "rtseg_version", "a string", d["rtseg_version"])


__all__ = ["validate_manifest_dict", "check_input_size", "INPUT_SIZE_RANGE",
           "MAX_CALL_SMOOTHING"]
