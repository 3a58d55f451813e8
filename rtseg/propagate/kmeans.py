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

import csv
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from rtseg.errors import UserError
from rtseg.imageio import CLASS_NAMES
from rtseg.model.tiles import parse_tile_path, split_tiles, tile_path  # noqa: F401

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


# ----------------------------------------------------------------------------- tiles



def crop_item(name: str | os.PathLike) -> np.ndarray:
    """Read the image, or the tile, named by a CSV path (``x.jpg`` or ``x.jpg#t2``), RGB uint8."""
    from rtseg.imageio import read_image

    path, index = parse_tile_path(name)
    img = read_image(path)
    return img if index is None else np.ascontiguousarray(split_tiles(img)[index])


def tile_labels_from_mask(mask: np.ndarray, min_fraction: float = 0.0) -> list[int]:
    """Label of each tile of ``mask``: polyp (1) if its fraction of mask pixels is above
    ``min_fraction`` (0 = any mask pixel), else non_polyp (0)."""
    return [POLYP if t.size and float(np.count_nonzero(t)) / t.size > min_fraction else NON_POLYP
            for t in split_tiles(np.asarray(mask))]


def image_features(paths: Sequence[Path], use_cache: bool = True, progress: bool = False,
                   mapper=None) -> tuple[np.ndarray, list[Path], list[Path]]:
    """Global features of whole images: (float32 [M, D], readable paths, skipped paths), with
    the default :class:`~rtseg.features.cache.FeatureCache` unless ``use_cache`` is False
    (``mapper``: see :func:`rtseg.features.extract_paths`)."""
    from rtseg.features import extract_paths

    cache = None
    if use_cache:
        from rtseg.features.cache import FeatureCache

        cache = FeatureCache()
    feats, ok, skipped = extract_paths(list(paths), cache=cache, progress=progress, mapper=mapper)
    return np.asarray(feats, np.float32), [Path(p) for p in ok], [Path(p) for p in skipped]


def tile_cache_path() -> Path:
    """The tile feature cache: ``tile_features.npz`` beside the image feature cache."""
    from rtseg.features.cache import default_cache_path

    return default_cache_path().with_name("tile_features.npz")


def _tile_key(key: tuple[str, int, int], index: int) -> tuple[str, int, int]:
    return tile_path(key[0], index), key[1], key[2]


def _tile_features_of_file(path: Path) -> np.ndarray | None:
    from rtseg.features import extract
    from rtseg.imageio import try_read_image

    img = try_read_image(path)
    if img is None or min(img.shape[:2]) < 2:
        return None
    return np.asarray(extract([np.ascontiguousarray(t) for t in split_tiles(img)]), np.float32)


def tile_features(paths: Sequence[Path], use_cache: bool = True, progress: bool = False,
                  workers: int | None = None, mapper=None
                  ) -> tuple[np.ndarray, list[Path], list[Path]]:
    """Global features of the 4 tiles of each image: (float32 [M, 4, D], readable paths,
    skipped paths), in the order of ``paths``.

    Like :func:`rtseg.features.extract_paths`: a thread pool, one warning for unreadable files,
    and a :class:`~rtseg.features.cache.FeatureCache` in its own file (:func:`tile_cache_path`)
    whose keys are the image's (absolute path + ``#t<i>``, size, mtime).
    """
    from concurrent.futures import ThreadPoolExecutor

    from rtseg.features import DEFAULT_WORKERS, N_FEATURES
    from rtseg.features.cache import FeatureCache, file_key
    from rtseg.imageio import warn_skipped

    paths = [Path(p) for p in paths]
    n = len(paths)
    cache = FeatureCache(tile_cache_path()) if use_cache else None
    keys = [file_key(p) for p in paths] if cache is not None else [None] * n
    results: list[np.ndarray | None] = [None] * n
    todo = []
    for i, key in enumerate(keys):
        if key is not None:
            hits = [cache.get(_tile_key(key, t)) for t in range(4)]
            if all(h is not None for h in hits):
                results[i] = np.stack(hits)
                continue
        todo.append(i)
    bar = _progress("tile features", n, n - len(todo)) if progress and n else None
    n_workers = max(1, min(int(workers or DEFAULT_WORKERS), len(todo) or 1))
    pool = (ThreadPoolExecutor(n_workers, thread_name_prefix="rtseg-tiles")
            if n_workers > 1 and mapper is None else None)
    try:
        computed = (mapper or (pool.map if pool is not None else map))(
            _tile_features_of_file, [paths[i] for i in todo])
        for i, f in zip(todo, computed):
            results[i] = f
            if f is not None and keys[i] is not None:
                for t in range(4):
                    cache.put(_tile_key(keys[i], t), f[t])
            if bar is not None:
                bar[0].advance(bar[1])
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if bar is not None:
            bar[0].stop()
        if cache is not None:
            cache.save()
    ok = [p for p, r in zip(paths, results) if r is not None]
    skipped = [p for p, r in zip(paths, results) if r is None]
    warn_skipped(skipped)
    feats = (np.stack([r for r in results if r is not None]) if ok
             else np.zeros((0, 4, N_FEATURES), np.float32))
    return feats, ok, skipped


def _progress(what: str, total: int, completed: int = 0):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    prog = Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn())
    task = prog.add_task(what, total=total, completed=completed)
    prog.start()
    return prog, task


# ----------------------------------------------------------------------------- truth


def read_truth_csv(path: str | os.PathLike) -> dict[str, str]:
    """Read ``path,label`` rows; returns {path string: label}. Raises UserError on bad input."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"truth CSV not found: {path}")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            cols = [c.strip() for c in (reader.fieldnames or [])]
            if "path" not in cols or "label" not in cols:
                raise UserError(f"truth CSV {path} needs the columns path,label (has: "
                                f"{','.join(cols) or 'none'})")
            out: dict[str, str] = {}
            for i, row in enumerate(reader, start=2):
                row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
                if row["label"] not in CLASS_NAMES:
                    raise UserError(f"truth CSV {path} line {i}: label must be polyp or "
                                    f"non_polyp, got {row['label']!r}")
                out[row["path"]] = row["label"]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"cannot read truth CSV {path}: {exc}") from None
    if not out:
        raise UserError(f"truth CSV {path} has no rows")
    return out


def _norm_key(name: str, base: Path | None = None) -> str:
    p, idx = parse_tile_path(name)
    if not p.is_absolute() and base is not None and not p.exists() and (base / p).exists():
        p = base / p
    key = os.path.normcase(os.path.abspath(p))
    return key if idx is None else tile_path(key, idx)


def match_truth(names: Sequence[str], truth: dict[str, str],
                base: Path | None = None) -> list[str | None]:
    """Truth label of each item name (or None): matched by absolute path (relative truth paths
    are taken from the working folder, else from ``base``), else by file name when unique."""
    by_path = {_norm_key(k, base): v for k, v in truth.items()}
    by_name: dict[str, str | None] = {}
    for k, v in truth.items():
        p, idx = parse_tile_path(k)
        key = p.name if idx is None else tile_path(p.name, idx)
        by_name[key] = v if key not in by_name else None  # None = ambiguous
    out = []
    for name in names:
        lab = by_path.get(_norm_key(name))
        if lab is None:
            p, idx = parse_tile_path(name)
            lab = by_name.get(p.name if idx is None else tile_path(p.name, idx))
        out.append(lab)
    return out


def truth_report(pred: Sequence[str], truth: Sequence[str]) -> dict:
    """Accuracy and per-class precision/recall/support of ``pred`` against ``truth``."""
    pred = np.asarray(pred, dtype=object)
    truth = np.asarray(truth, dtype=object)
    n = len(pred)
    rep: dict = {"n": n, "accuracy": float((pred == truth).mean()) if n else None, "classes": {}}
    for c in CLASS_NAMES:
        tp = int(((pred == c) & (truth == c)).sum())
        npred = int((pred == c).sum())
        ntrue = int((truth == c).sum())
        rep["classes"][c] = {
            "precision": tp / npred if npred else None,
            "recall": tp / ntrue if ntrue else None,
            "predicted": npred,
            "support": ntrue,
        }
    return rep


# ----------------------------------------------------------------------------- output


def write_labels_csv(path: str | os.PathLike, names: Sequence[str],
                     result: PropagationResult) -> int:
    """Write labeled items as ``path,label,source,round`` atomically; returns the row count."""
    from rtseg.atomic import atomic_open

    rows = 0
    with atomic_open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(CSV_COLUMNS)
        for name, lab, src, r in zip(names, result.labels, result.source, result.round):
            if lab >= 0:
                w.writerow((name, CLASS_NAMES[lab], src, int(r)))
                rows += 1
    return rows


def write_features_csv(path: str | os.PathLike, names: Iterable[str], features: np.ndarray,
                       columns: Sequence[str]) -> None:
    """``path`` + one column per feature, atomically."""
    from rtseg.atomic import atomic_open

    with atomic_open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(("path", *columns))
        for name, row in zip(names, np.asarray(features)):
            w.writerow((str(name), *(repr(float(v)) for v in row)))
