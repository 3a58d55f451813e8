"""Label propagation with k-means on global image features (the paper's stage 1).

A few images carry a label (``polyp`` / ``non_polyp``, the *seeds*); many more carry none.
Their global features (:mod:`rtseg.features`, 226 LIRE values) are clustered with k-means and
unlabeled images take the label of the labeled images that share their cluster, until
``target`` images are labeled or nothing more can be labeled.

Algorithm (:func:`propagate`)
-----------------------------
Labels are integers: ``-1`` unlabeled, ``0`` non_polyp, ``1`` polyp
(:data:`rtseg.imageio.CLASS_NAMES`). "Labeled" always means seeds *plus* every image labeled
in an earlier round.

0. Scaling: ``scale="standard"`` z-scores every feature over all images (seeds and
   unlabeled; a constant feature becomes 0); ``"none"`` clusters the raw vectors, whose
   ranges differ by orders of magnitude (on the benchmark data: edge histogram 0-7, Tamura
   coarseness 3.2-3.8, luminance layout 0-31, colour histogram 0-255, Tamura directionality
   counts up to ~1200), so a few features dominate the Euclidean distance.
1. A round fits k-means on all images (scikit-learn ``KMeans(k, init="k-means++",
   random_state=0, max_iter=300, n_init=1)``); the first round uses ``k = n_clusters``.
2. For every cluster: ``n_lab`` = its labeled members (seeds and earlier propagated ones),
   ``majority`` = their most frequent label and ``purity`` = that label's share of ``n_lab``.
   A cluster *qualifies* if it has at least one unlabeled member, ``n_lab >= min_labeled``
   (default 1), and its majority share is at least the ``purity`` option (default 0.5) and
   above 0.5 (a tie never labels anything). Clusters with labeled members that fail the purity rule are
   counted as *mixed* and left alone.
3. Qualifying clusters are ranked by ``n_lab`` (most labeled members first; ties: higher
   purity, then lower cluster index). In that order, every unlabeled member of a cluster
   takes the cluster's majority label (source ``propagated``, the round's number), until
   ``target`` images are labeled. If the whole cluster would overshoot the target, only the
   members closest to its centroid are labeled, so the run ends with exactly ``target``.
4. A round that labeled something is recorded (:class:`RoundSummary`). k-means on the same
   data and the same ``k`` would give the same clusters again (the fault of the paper's
   code, whose loop refits unchanged data and relabels nothing new), and every qualifying
   cluster is now fully labeled. So the next fit uses ``k // 2`` clusters (at least
   ``min_clusters`` = 2): coarser clusters merge unlabeled groups with labeled ones, and the
   images labeled in this round count as labeled there. A fit that qualifies no cluster
   is not a round; the algorithm coarsens again.
5. Stop when ``target`` images are labeled (``stop_reason="target"``), when no unlabeled image
   is left (``"exhausted"``), or after the fit at ``k = min_clusters`` if neither holds
   (``"stalled"``: nothing more can be labeled, as a refit would give the same clusters; the
   remaining images are in clusters without labeled members or in mixed clusters). ``k``
   strictly decreases, so the loop always ends,
   after at most ``max(1, ceil(log2(n_clusters)))`` fits (8 for k = 200).

The result is deterministic for a given input. ``target`` counts all labeled images (seeds
included); a target at or below the number of seeds labels nothing new.

Tiles
-----
The paper's Run 1 splits every image into 2x2 tiles (:func:`split_tiles`): ``t0`` top-left,
``t1`` top-right, ``t2`` bottom-left, ``t3`` bottom-right; with an odd size the bottom/right
tiles get the extra row/column. A tile is named ``<image path>#t<i>`` (:func:`tile_path`,
:func:`parse_tile_path`); :func:`crop_item` reads the image or tile behind such a name.
A seed tile's label comes from the image's mask when one is given (:func:`tile_labels_from_mask`:
polyp if the tile's fraction of mask pixels is above ``min_fraction``, default 0 = any
pixel; the mask wins over the image's folder), otherwise from the image's folder.

Defaults and evidence (``benchmarks/propagate.py ../shared/data``, 100 + 100 seeds, 3 draws)
-------------------------------------------------------------------------------------------
``scale="standard"``: on whole images (Kvasir-SEG + CVC-ClinicDB vs non-polyp crops) both
scalings reach >= 0.998 propagated-label accuracy for k = 50/200/250, but that task is easy for
a trivial reason (the crops have no black endoscope border; a dark-corner rule alone scores
0.999). On Kvasir-SEG tiles, the only non-trivial task, standard scaling is better at every k
(balanced accuracy at target 1000: 0.58/0.54/0.57 vs 0.49/0.53/0.51 with any mask pixel =
polyp; 0.66/0.66/0.65 vs 0.59/0.56/0.57 with mask fraction > 0.25 vs none), though tile
propagation with these global features stays weak either way. ``purity=0.5`` (plain majority,
as in the paper): 0.8 made no difference on whole images and little on tiles.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from rtseg.imageio import CLASS_NAMES

UNLABELED = -1
NON_POLYP = CLASS_NAMES.index("non_polyp")
POLYP = CLASS_NAMES.index("polyp")
SCALES = ("standard", "none")
DEFAULT_SCALE = "standard"
DEFAULT_PURITY = 0.5
DEFAULT_CLUSTERS = 200
DEFAULT_TARGET = 1000
MIN_CLUSTERS = 2
CSV_COLUMNS = ("path", "label", "source", "round")
SINGLE_THREAD_WORK = 5_000_000  # k-means on one thread while n_items * k is at most this

# ----------------------------------------------------------------------------- core


@dataclass
class RoundSummary:
    """What one round did: k, clusters used/mixed, images newly labeled per class."""

    round: int
    n_clusters: int
    clusters_used: int
    clusters_mixed: int
    new: dict[str, int]  # class name -> images newly labeled in this round
    labeled_total: int  # labeled after this round (seeds included)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class PropagationResult:
    labels: np.ndarray  # int [N]: -1 unlabeled, 0 non_polyp, 1 polyp
    source: np.ndarray  # str [N]: "seed", "propagated" or "" (unlabeled)
    round: np.ndarray  # int [N]: 0 seeds, r >= 1 propagated in round r, -1 unlabeled
    rounds: list[RoundSummary]  # productive rounds, in order
    seeds: dict[str, int]  # class name -> number of seeds
    target: int
    stop_reason: str  # "target", "exhausted" or "stalled"
    message: str  # one sentence saying why it stopped
    fits: list[int] = field(default_factory=list)  # k of every k-means fit, in order

    @property
    def n_labeled(self) -> int:
        return int((self.labels >= 0).sum())

    @property
    def n_propagated(self) -> int:
        return int((self.source == "propagated").sum())

    @property
    def target_reached(self) -> bool:
        return self.stop_reason == "target"

    def summary(self) -> dict:
        return {
            "n_items": int(len(self.labels)),
            "seeds": dict(self.seeds),
            "labeled": self.n_labeled,
            "propagated": self.n_propagated,
            "labeled_per_class": {c: int((self.labels == i).sum()) for i, c in enumerate(CLASS_NAMES)},
            "target": self.target,
            "target_reached": self.target_reached,
            "stop_reason": self.stop_reason,
            "message": self.message,
            "kmeans_fits": list(self.fits),
            "rounds": [r.as_dict() for r in self.rounds],
        }


def scale_features(features: np.ndarray, scale: str = DEFAULT_SCALE) -> np.ndarray:
    """float64 copy of ``features``, z-scored per column for ``"standard"``, raw for ``"none"``."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be 2-D [N, D], got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or infinite values")
    if scale == "none":
        return x.copy()
    if scale == "standard":
        mean = x.mean(axis=0)
        std = x.std(axis=0)
        std[std == 0] = 1.0
        return (x - mean) / std
    raise ValueError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")


def _kmeans(x: np.ndarray, k: int, random_state: int, n_init: int):
    import contextlib
    import warnings

    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    km = KMeans(n_clusters=k, init="k-means++", random_state=random_state, max_iter=300,
                n_init=n_init)
    # a few thousand points: OpenMP start-up/spinning costs more than it saves, and on a busy
    # machine it costs seconds (0.3 s on one thread vs 1-6 s on two, 3108 x 226, k=200)
    small = len(x) * k <= SINGLE_THREAD_WORK
    with threadpool_limits(1) if small else contextlib.nullcontext(), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # duplicates: < k distinct clusters
        assign = km.fit_predict(x)
    return assign, km.cluster_centers_


def propagate(
    features: np.ndarray,
    seed_labels: Sequence[int] | np.ndarray,
    n_clusters: int = DEFAULT_CLUSTERS,
    target: int = DEFAULT_TARGET,
    purity: float = DEFAULT_PURITY,
    scale: str = DEFAULT_SCALE,
    *,
    min_labeled: int = 1,
    min_clusters: int = MIN_CLUSTERS,
    random_state: int = 0,
    n_init: int = 1,
    unit: str = "images",
) -> PropagationResult:
    """Propagate ``seed_labels`` (-1 unlabeled, 0 non_polyp, 1 polyp) over ``features`` [N, D].

    See the module docstring for the algorithm. ``unit`` names the items in the messages
    ("images", "tiles"). Raises ValueError for inconsistent input (the CLI checks user input
    first and raises UserError).
    """
    x = scale_features(features, scale)
    y0 = np.asarray(seed_labels).astype(np.int64).reshape(-1)
    n = len(x)
    if len(y0) != n:
        raise ValueError(f"{len(y0)} seed labels for {n} feature rows")
    if not np.isin(y0, (UNLABELED, NON_POLYP, POLYP)).all():
        raise ValueError("seed labels must be -1 (unlabeled), 0 (non_polyp) or 1 (polyp)")
    for c in (NON_POLYP, POLYP):
        if not (y0 == c).any():
            raise ValueError(f"no seed of class {CLASS_NAMES[c]}: need at least one per class")
    if not 1 <= n_clusters <= n:
        raise ValueError(f"n_clusters={n_clusters} must be between 1 and the number of items ({n})")
    if target < 1:
        raise ValueError("target must be at least 1")
    if not 0.0 <= purity <= 1.0:
        raise ValueError("purity must be between 0 and 1")
    min_clusters = max(1, min(min_clusters, n_clusters))

    labels = y0.copy()
    source = np.where(labels >= 0, "seed", "").astype(object)
    rnd = np.where(labels >= 0, 0, -1).astype(np.int64)
    seeds = {CLASS_NAMES[c]: int((y0 == c).sum()) for c in (NON_POLYP, POLYP)}
    rounds: list[RoundSummary] = []
    fits: list[int] = []

    def result(reason: str, message: str) -> PropagationResult:
        return PropagationResult(labels, source.astype(str), rnd, rounds, seeds, target,
                                 reason, message, fits)

    k = n_clusters
    while True:
        n_lab = int((labels >= 0).sum())
        if n_lab >= target:
            return result("target", f"target reached: {n_lab} of {n} {unit} labeled "
                                    f"(target {target}) after {len(rounds)} round(s)")
        if n_lab == n:
            return result("exhausted", f"all {n} {unit} are labeled, below the target "
                                       f"{target}, after {len(rounds)} round(s)")
        assign, centers = _kmeans(x, k, random_state, n_init)
        fits.append(k)
        # per-cluster counts of unlabeled / non_polyp / polyp members
        counts = np.zeros((k, 3), np.int64)
        np.add.at(counts, (assign, labels + 1), 1)
        n_unl, n_neg, n_pos = counts[:, 0], counts[:, 1], counts[:, 2]
        n_lbl = n_neg + n_pos
        majority = np.where(n_pos > n_neg, POLYP, NON_POLYP)
        with np.errstate(invalid="ignore", divide="ignore"):
            pur = np.where(n_lbl > 0, np.maximum(n_pos, n_neg) / np.maximum(n_lbl, 1), 0.0)
        has_lab = (n_lbl >= max(1, min_labeled)) & (n_unl > 0)
        pure = (pur >= purity) & (pur > 0.5)
        qualify = np.flatnonzero(has_lab & pure)
        mixed = int((has_lab & ~pure).sum())
        if len(qualify):
            order = sorted(qualify, key=lambda c: (-n_lbl[c], -pur[c], c))
            rnum = len(rounds) + 1
            new = {name: 0 for name in CLASS_NAMES}
            used = 0
            for c in order:
                room = target - int((labels >= 0).sum())
                if room <= 0:
                    break
                members = np.flatnonzero((assign == c) & (labels == UNLABELED))
                if len(members) > room:
                    d = ((x[members] - centers[c]) ** 2).sum(axis=1)
                    members = members[np.argsort(d, kind="stable")[:room]]
                labels[members] = majority[c]
                source[members] = "propagated"
                rnd[members] = rnum
                new[CLASS_NAMES[majority[c]]] += len(members)
                used += 1
            rounds.append(RoundSummary(rnum, k, used, mixed, new, int((labels >= 0).sum())))
        n_lab = int((labels >= 0).sum())
        if n_lab < target and n_lab < n and k <= min_clusters:
            # a refit at the same k gives the same clusters, whose qualifying ones are now full
            return result("stalled", f"nothing more can be labeled: {n_lab} of {n} {unit} "
                                     f"labeled (target {target}) after {len(rounds)} round(s); "
                                     f"at k={k} every cluster with unlabeled {unit} has no "
                                     f"labeled member or fails the purity rule ({mixed} mixed)")
        k = max(min_clusters, k // 2)  # same k would give the same clusters: coarsen
