"""Constant-mask baselines: what a segmenter must beat without looking at the image.

Two masks that need no model, both the same for every image of a given size:

- **centred ellipse**: centre ((W-1)/2, (H-1)/2), radii ``r*W`` and ``r*H`` (``r`` is a
  fraction of the width and of the height; :data:`DEFAULT_RADIUS` = 0.25 gives an ellipse
  half as wide and half as tall as the frame, area ``pi r^2 W H``). Still polyp images are
  framed with the polyp near the centre, so this scores surprisingly well;
- **all foreground**: every pixel is polyp (recall 1, precision = the polyp's share).

They are scored with the model's own scorer (:class:`rtseg.evaluate.metrics.MedicoScorer`, same
``reduction`` and ``zero_division`` as the caller), on the truth masks the model is scored
on, at those masks' size. :func:`choose_radius` picks ``r`` on tuning data (best mean Dice
over :data:`DEFAULT_RADII`); ``rtseg tune --write`` stores it in the manifest
(``metrics["tuning"]["baselines"]``) and ``rtseg eval`` reads it back
(:func:`manifest_radius`), so test images never choose the baseline's radius.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from rtseg.evaluate.metrics import DEFAULT_REDUCTION, DEFAULT_ZERO_DIVISION, MedicoScorer, as_bool_mask

DEFAULT_RADIUS = 0.25
DEFAULT_RADII = tuple(round(0.10 + 0.025 * i, 3) for i in range(17))  # 0.10 .. 0.50
BASELINE_NAMES = ("ellipse", "all_foreground")
LABELS = {"ellipse": "centred ellipse", "all_foreground": "all foreground"}


def check_radius(radius: float) -> float:
    from rtseg.errors import UserError

    r = float(radius)
    if not np.isfinite(r) or r <= 0:
        raise UserError(f"ellipse radius must be a positive fraction of the side, got {radius}")
    return r


def ellipse_mask(hw: tuple[int, int], radius: float = DEFAULT_RADIUS) -> np.ndarray:
    """A bool ``[H, W]`` mask: the centred ellipse with radii ``radius*W`` and ``radius*H``.

    Pixel ``(y, x)`` is inside when its centre satisfies
    ``((x - (W-1)/2) / (r W))^2 + ((y - (H-1)/2) / (r H))^2 <= 1``, so the mask is symmetric
    about both axes of the frame.
    """
    h, w = int(hw[0]), int(hw[1])
    r = check_radius(radius)
    y = (np.arange(h, dtype=np.float64) - (h - 1) / 2.0) / (r * h)
    x = (np.arange(w, dtype=np.float64) - (w - 1) / 2.0) / (r * w)
    return (y[:, None] ** 2 + x[None, :] ** 2) <= 1.0


def all_foreground_mask(hw: tuple[int, int]) -> np.ndarray:
    """A bool ``[H, W]`` mask that is polyp everywhere."""
    return np.ones((int(hw[0]), int(hw[1])), bool)


class BaselineScorer:
    """Scores both constant masks against truth masks added one at a time (none is kept).

    >>> s = BaselineScorer(0.3); s.add(truth); ...; s.result()["ellipse"]["dice"]
    """

    def __init__(self, radius: float = DEFAULT_RADIUS, reduction: str = DEFAULT_REDUCTION,
                 zero_division: float = DEFAULT_ZERO_DIVISION) -> None:
        self.radius = check_radius(radius)
        self.scorers = {name: MedicoScorer(reduction, zero_division) for name in BASELINE_NAMES}
        self._ellipses: dict[tuple[int, int], np.ndarray] = {}

    def add(self, truth) -> None:
        t = as_bool_mask(truth)
        hw = t.shape
        if hw not in self._ellipses:
            self._ellipses[hw] = ellipse_mask(hw, self.radius)
        self.scorers["ellipse"].add(self._ellipses[hw], t)
        self.scorers["all_foreground"].add(all_foreground_mask(hw), t)

    @property
    def n_images(self) -> int:
        return self.scorers["ellipse"].n_images

    def result(self) -> dict[str, dict]:
        """``{"ellipse": {"radius": r, <six metrics>, "n_images"}, "all_foreground": {...}}``."""
        return {"ellipse": {"radius": self.radius, **self.scorers["ellipse"].result()},
                "all_foreground": self.scorers["all_foreground"].result()}


def score_baselines(truths: Iterable, radius: float = DEFAULT_RADIUS,
                    reduction: str = DEFAULT_REDUCTION,
                    zero_division: float = DEFAULT_ZERO_DIVISION) -> dict[str, dict]:
    """Medico 2021 scores of the centred ellipse (``radius``) and the all-foreground mask
    against every truth mask (see :meth:`BaselineScorer.result` for the layout)."""
    s = BaselineScorer(radius, reduction, zero_division)
    for t in truths:
        s.add(t)
    if s.n_images == 0:
        raise ValueError("no truth masks to score the baselines on")
    return s.result()


def choose_radius(truths: Sequence, radii: Sequence[float] = DEFAULT_RADII,
                  reduction: str = DEFAULT_REDUCTION,
                  zero_division: float = DEFAULT_ZERO_DIVISION) -> tuple[float, float]:
    """The ellipse radius of ``radii`` with the best mean Dice on ``truths`` (the smallest
    one on a tie), and that Dice."""
    truths = [as_bool_mask(t) for t in truths]
    if not truths:
        raise ValueError("no truth masks to choose the ellipse radius on")
    if not radii:
        raise ValueError("no radii to choose from")
    best_r, best_d = None, -1.0
    for r in sorted(check_radius(v) for v in radii):
        s = MedicoScorer(reduction, zero_division)
        masks: dict[tuple[int, int], np.ndarray] = {}
        for t in truths:
            if t.shape not in masks:
                masks[t.shape] = ellipse_mask(t.shape, r)
            s.add(masks[t.shape], t)
        d = float(s.result()["dice"])
        if d > best_d:
            best_r, best_d = r, d
    return float(best_r), best_d


def manifest_radius(manifest) -> tuple[float, str]:
    """The ellipse radius ``rtseg tune --write`` recorded in a manifest, and where it came
    from: ``(r, "manifest")``, or ``(DEFAULT_RADIUS, "default")`` when it recorded none."""
    metrics = getattr(manifest, "metrics", None) or {}
    try:
        r = metrics["tuning"]["baselines"]["ellipse"]["radius"]
        return check_radius(r), "manifest"
    except Exception:  # noqa: BLE001 - missing or malformed record
        return DEFAULT_RADIUS, "default"


def beats(model_dice: float, baselines: dict) -> bool:
    """Whether ``model_dice`` is higher than every baseline's Dice."""
    return all(float(model_dice) > float(b["dice"]) for b in baselines.values())


def not_beaten_message(model_dice: float, baselines: dict, what: str = "the model's masks") -> str | None:
    """One line naming the first baseline ``model_dice`` does not beat (None if it beats all)."""
    for name in BASELINE_NAMES:
        b = baselines.get(name)
        if b is None or float(model_dice) > float(b["dice"]):
            continue
        mask = (f"a constant centred ellipse of radius {b['radius']:g}" if name == "ellipse"
                else "the constant all-foreground mask")
        return f"{what} do not beat {mask} (Dice {float(model_dice):.4f} vs {float(b['dice']):.4f})"
    return None


def rounded(baselines: dict, digits: int = 4) -> dict:
    """A copy of a baselines dict with its floats rounded (for manifests)."""
    return {name: {k: (round(v, digits) if isinstance(v, float) else v) for k, v in b.items()}
            for name, b in baselines.items()}
