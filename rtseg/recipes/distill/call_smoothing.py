"""The frame call as the live loop shows it: video sequences played in frame order through
:class:`rtseg.live.smoothing.CallSmoother`, and its factor chosen without the held-out fold.

The data's video sequences (PolypGen polyp-free sequences, CVC-ClinicDB polyp sequences) are
near-consecutive frames; single images (Kvasir-SEG, PolypGen polyp frames) are one-frame clips,
which the filter leaves as they are. :func:`rtseg.recipes.distill.fit.choose_call_smoothing`
picks the factor by a 2-fold sequence-grouped cross-validation inside the training selection:
the factor of :data:`CALL_FACTORS` that maximises min(polyp frames called polyp, polyp-free
frames called non-polyp) over the inner held-out folds (:func:`best_factor`).
"""

from __future__ import annotations

import numpy as np

from rtseg.imageio import natural_key
from rtseg.live.smoothing import MAX_CALL_SMOOTHING, CallSmoother
from rtseg.model.call import is_polyp
from rtseg.recipes.layout import Item

#: the factors searched (0: every frame alone; at most MAX_CALL_SMOOTHING, a 5-frame time constant)
CALL_FACTORS = (0.0, 0.3, 0.5, 0.6, 0.7, MAX_CALL_SMOOTHING)
VIDEO_SOURCES = ("cvc", "pg_neg")  # the sources whose groups are video sequences


def clips(items: list[Item]) -> list[list[Item]]:
    """The items of each sequence (``group``) in frame order, which is the natural order of their
    file names (``rtseg stream --source FOLDER``'s order), sequences in name order."""
    out: dict[str, list[Item]] = {}
    for it in items:
        out.setdefault(it.group, []).append(it)
    return [sorted(its, key=lambda it: natural_key(it.image)) for _, its in sorted(out.items())]


def clip_calls(p: np.ndarray, a: float) -> np.ndarray:
    """A clip's frame probabilities in order -> called polyp per frame, as the live loop calls them."""
    return is_polyp(CallSmoother(a)(p))


def stream_probs(probs: list[tuple[list[Item], np.ndarray]], a: float) -> dict[str, float]:
    """Image path -> the probability the live loop's call compares, each clip through a fresh
    CallSmoother(a)."""
    return {str(it.image): float(z) for clip, p in probs for it, z in zip(clip, CallSmoother(a)(p))}


def stream_calls(probs: list[tuple[list[Item], np.ndarray]], a: float) -> dict[str, bool]:
    """Image path -> called polyp, each clip through a fresh CallSmoother(a)."""
    return {k: bool(is_polyp(z)) for k, z in stream_probs(probs, a).items()}


def flips(probs: list[tuple[list[Item], np.ndarray]], a: float) -> tuple[int, int]:
    """(changes of the call between consecutive frames, consecutive pairs) over the clips."""
    n = pairs = 0
    for _, p in probs:
        z = clip_calls(p, a)
        n += int((z[1:] != z[:-1]).sum())
        pairs += max(0, len(z) - 1)
    return n, pairs


def call_rates(pos_single: int, n_single: int, cvc: list[tuple[list[Item], np.ndarray]],
               neg: list[tuple[list[Item], np.ndarray]]) -> dict[float, tuple[int, int, int, int]]:
    """Per factor of CALL_FACTORS: (polyp frames called polyp, polyp frames, polyp-free frames
    called non-polyp, polyp-free frames); single polyp images (``pos_single`` of ``n_single``
    called) are one-frame clips, the same at every factor."""
    out = {}
    for a in CALL_FACTORS:
        pc, nc = stream_calls(cvc, a), stream_calls(neg, a)
        out[a] = (pos_single + sum(pc.values()), n_single + len(pc), sum(not z for z in nc.values()), len(nc))
    return out


def best_factor(counts: dict[float, np.ndarray]) -> tuple[float, dict[float, tuple[float, float]]]:
    """The factor maximising min(polyp rate, polyp-free rate) over summed counts (ties: the
    smaller factor), and the rates per factor."""
    table = {a: (round(t[0] / max(1, t[1]), 4), round(t[2] / max(1, t[3]), 4)) for a, t in counts.items()}
    return max(table, key=lambda a: (min(table[a]), -a)), table
