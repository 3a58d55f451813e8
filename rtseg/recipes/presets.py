"""The paper's five runs (MediaEval 2021 Medico, team Medical-XAI), end to end.

A :class:`Preset` holds what differs between the runs; :func:`run_preset` runs one on a data
folder laid out like ``../shared/data`` (see its README): split -> seeds (100 polyp + 100
non-polyp) -> label propagation (:mod:`rtseg.propagate.kmeans`) -> training (:mod:`rtseg.train.loop`) ->
Medico 2021 scoring on held-out polyp images with masks (:mod:`rtseg.evaluate.scoring`). This module
only wires those steps together; each step's behaviour is defined by the module that owns it.

=====  ======================  ===========  ================  ========  ================
run    unit                    CAM layer    threshold         clusters  target (labeled)
=====  ======================  ===========  ================  ========  ================
run1   2x2 tiles (from masks)  14           band 0.4 0.7      200 (A)   2000 tiles (A)
run2   whole images            13           band 0.4 0.7      200 (A)   1000
run3   whole images            14           band 0.4 0.7      50 (A)    1000
run4   whole images            20           above 0.28        250 (A)   1000
run5   whole images            22           above 0.28        200 (A)   1000
=====  ======================  ===========  ================  ========  ================

Sources: unit, layers and thresholds are the paper's (Storås, "Unsupervised Image
Segmentation via Self-Supervised Learning Image Classification", MediaEval 2021 working notes,
CEUR-WS Vol-3181 paper 12); so are 100 + 100 seeds, 1,000
labeled images, EfficientNet-b1 and 25 epochs. (A) = assumption: the paper used 50, 200 and
250 clusters across its runs, but the per-run assignment could not be found in the sources
available to us, so it is assigned as above; Run 1's target counts tiles and is set to twice
the image target (as :mod:`rtseg.recipes.paper` does), since the 800 tiles of the 200 seed
images are already labeled. Every value can be overridden (``rtseg run --clusters/--target``).

Data split (deterministic; :mod:`rtseg.recipes.layout`): polyp images (Kvasir-SEG + CVC-ClinicDB,
grouped by CVC sequence so one sequence never spans train and test) and non-polyp crops are
split into train / test (``test_fraction``, default 0.2) or into ``k`` folds. Seeds are the
first ``n_seeds`` train images of each class in a seeded hash order; every other train image
is the unlabeled pool. Polyp masks are used only for Run 1's seed-tile labels and for scoring.
"""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from rtseg.errors import UserError

# ---------------------------------------------------------------------------------- presets


@dataclass(frozen=True)
class Preset:
    name: str
    tiles: bool  # propagate and train on 2x2 tiles; one CAM per tile at inference
    layer: int | str  # CAM layer (EfficientNet-b1 block index)
    threshold: str  # threshold policy text (rtseg.model.thresholds)
    clusters: int  # k of the first k-means fit
    target: int  # labeled items (images, or tiles for Run 1) to reach, seeds included
    description: str = ""
    assumed: tuple[str, ...] = ()  # fields not taken from the paper

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["assumed"] = list(self.assumed)
        return d


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("run1", True, 14, "band 0.4 0.7", 200, 2000,
           "2x2 tiles labeled from the seed masks, CAM layer 14, band 0.4-0.7",
           ("clusters", "target")),
    Preset("run2", False, 13, "band 0.4 0.7", 200, 1000,
           "whole images, CAM layer 13, band 0.4-0.7", ("clusters",)),
    Preset("run3", False, 14, "band 0.4 0.7", 50, 1000,
           "whole images, CAM layer 14, band 0.4-0.7", ("clusters",)),
    Preset("run4", False, 20, "above 0.28", 250, 1000,
           "whole images, CAM layer 20, above 0.28", ("clusters",)),
    Preset("run5", False, 22, "above 0.28", 200, 1000,
           "whole images, CAM layer 22, above 0.28", ("clusters",)),
)}

# The paper's Table 1 (Medico 2021 test set). Only the ranges over the five runs were
# available to us (not the per-run numbers), so every run shows the same ranges.
PAPER_TABLE1_RANGES: dict[str, tuple[float, float]] = {
    "jaccard": (0.10, 0.14),
    "dice": (0.18, 0.22),
    "recall": (0.37, 0.63),
    "precision": (0.13, 0.16),
}
PAPER_TABLE1_NOTE = ("paper: ranges over Runs 1-5 on the Medico 2021 test set; the per-run "
                     "values were not available")


def get_preset(name: str) -> Preset:
    key = str(name).strip().lower().replace(" ", "")
    if key.isdigit():
        key = f"run{key}"
    if key not in PRESETS:
        raise UserError(f"unknown preset '{name}' (use {', '.join(PRESETS)})")
    return PRESETS[key]


# ---------------------------------------------------------------------------------- splits


def _hash(text: str, seed: int) -> str:
    return hashlib.sha1(f"{seed}:{text}".encode()).hexdigest()


@dataclass
class RunSplit:
    seeds_polyp: list  # rtseg.recipes.layout.Item
    seeds_non_polyp: list
    pool: list  # unlabeled train images (both classes; their labels are only used as truth)
    test_polyp: list  # held-out polyp images with masks: scored
    test_non_polyp: list  # held-out non-polyp crops: classification only
    name: str = "holdout"

    def sizes(self) -> dict[str, int]:
        return {"seeds_polyp": len(self.seeds_polyp), "seeds_non_polyp": len(self.seeds_non_polyp),
                "pool": len(self.pool), "test_polyp": len(self.test_polyp),
                "test_non_polyp": len(self.test_non_polyp)}


def _pick(train_polyp: list, train_non_polyp: list, test_polyp: list, test_non_polyp: list,
          n_seeds: int, seed: int, name: str) -> RunSplit:
    if n_seeds < 1:
        raise UserError(f"--seeds must be at least 1, not {n_seeds}")
    tp = sorted(train_polyp, key=lambda it: _hash(str(it.image), seed))
    tn = sorted(train_non_polyp, key=lambda it: _hash(str(it.image), seed))
    for what, items in (("polyp", tp), ("non-polyp", tn)):
        if len(items) <= n_seeds:
            raise UserError(f"only {len(items)} {what} training image(s) for {n_seeds} seeds "
                            "and an unlabeled pool: use fewer --seeds or more data")
    if not test_polyp:
        raise UserError("no held-out polyp image with a mask to score")
    return RunSplit(tp[:n_seeds], tn[:n_seeds], tp[n_seeds:] + tn[n_seeds:], list(test_polyp),
                    list(test_non_polyp), name)


def open_data(data: str | os.PathLike):
    from rtseg.recipes.layout import DataFolder

    return DataFolder.open(data)


def holdout_split(df, test_fraction: float = 0.2, n_seeds: int = 100, seed: int = 0) -> RunSplit:
    """Train/test split by group (a CVC sequence never spans both), then seeds + pool."""
    from rtseg.recipes.layout import split_groups

    if not 0.0 < test_fraction < 1.0:
        raise UserError(f"--test-fraction must be between 0 and 1, not {test_fraction}")
    fr = {"train": 1.0 - test_fraction, "test": test_fraction}
    pol = split_groups(df.kvasir + df.cvc, fr, seed)
    neg = split_groups(df.non_polyp, fr, seed)
    return _pick(pol["train"], neg["train"], pol["test"], neg["test"], n_seeds, seed, "holdout")


def fold_split(df, folds: int, fold: int, n_seeds: int = 100, seed: int = 0) -> RunSplit:
    """Fold ``fold`` of ``folds`` as the test set (a CVC sequence never spans two folds)."""
    from rtseg.recipes.layout import group_folds

    if not 0 <= fold < folds:
        raise UserError(f"fold {fold} out of range for {folds} folds")
    pf = group_folds(df.kvasir + df.cvc, folds, seed)
    nf = group_folds(df.non_polyp, folds, seed)
    rest = [i for i in range(folds) if i != fold]
    return _pick([it for i in rest for it in pf[i]], [it for i in rest for it in nf[i]],
                 pf[fold], nf[fold], n_seeds, seed, f"fold {fold + 1}/{folds}")


# ---------------------------------------------------------------------------------- the run


@dataclass
class RunConfig:
    preset: Preset
    data: Path
    out: Path
    device: str = "auto"
    epochs: int = 25
    batch: int = 16
    size: int = 224
    n_seeds: int = 100
    clusters: int | None = None  # None: the preset's
    target: int | None = None  # None: the preset's
    test_fraction: float = 0.2
    val: int = 60
    seed: int = 0
    init: Path | None = None  # ImageNet weights for training (rtseg.train.loop TrainConfig.init)
    workers: int | None = None
    cache: bool = True  # feature cache (rtseg.propagate.kmeans)
    figure_rows: int = 4
    progress: bool = True
    extra_train: dict[str, Any] = field(default_factory=dict)  # more TrainConfig fields

    def resolved(self) -> Preset:
        p = self.preset
        return replace(p, clusters=self.clusters or p.clusters, target=self.target or p.target)


def _abs(p: Path) -> str:
    return os.path.abspath(p)


def propagate_labels(split: RunSplit, preset: Preset, labels_csv: Path,
                     use_cache: bool = True, progress: bool = True) -> dict:
    """Seeds + pool -> features -> :func:`rtseg.propagate.kmeans.propagate` -> labels CSV.

    Run 1 (``preset.tiles``) labels seed tiles from their masks and propagates tiles. Returns
    the propagation summary plus ``truth``: the propagated labels scored against the pool's
    known classes (tiles: against the masks).
    """
    import numpy as np

    from rtseg.propagate import files as PF, kmeans as P
    from rtseg.imageio import CLASS_NAMES, read_mask

    seeds = [(it, P.POLYP) for it in split.seeds_polyp] + \
            [(it, P.NON_POLYP) for it in split.seeds_non_polyp]
    items = [it for it, _ in seeds] + list(split.pool)
    seed_of = {id(it): lab for it, lab in seeds}
    paths = [Path(_abs(it.image)) for it in items]
    feats_fn = PF.tile_features if preset.tiles else PF.image_features
    feats, ok, _skipped = feats_fn(paths, use_cache=use_cache, progress=progress)
    by_path = {p: it for p, it in zip(paths, items)}
    names, y, truth = [], [], []
    for p in ok:
        it = by_path[p]
        lab = seed_of.get(id(it))
        if preset.tiles:
            tl = (PF.tile_labels_from_mask(read_mask(it.mask)) if it.mask is not None
                  else [P.NON_POLYP] * 4)
            names += [PF.tile_path(p, i) for i in range(4)]
            y += tl if lab is not None else [P.UNLABELED] * 4
            truth += [CLASS_NAMES[t] for t in tl]
        else:
            names.append(str(p))
            y.append(lab if lab is not None else P.UNLABELED)
            truth.append(it.label)
    x = feats.reshape(-1, feats.shape[-1])
    y_arr = np.asarray(y, np.int64)
    for c in (P.POLYP, P.NON_POLYP):
        if not (y_arr == c).any():
            raise UserError(f"no readable {CLASS_NAMES[c]} seed")
    if preset.clusters > len(x):
        raise UserError(f"{preset.clusters} clusters for only {len(x)} "
                        f"{'tiles' if preset.tiles else 'images'}: use --clusters")
    res = P.propagate(x, y_arr, n_clusters=preset.clusters, target=preset.target)
    if not res.target_reached:
        warnings.warn(res.message, stacklevel=2)
    PF.write_labels_csv(labels_csv, names, res)
    summary = res.summary()
    prop = [i for i, s in enumerate(res.source) if s == "propagated"]
    summary["truth"] = (PF.truth_report([CLASS_NAMES[res.labels[i]] for i in prop],
                                       [truth[i] for i in prop]) if prop else None)
    return summary


def heldout_probs(bundle, items: list, batch_size: int = 16) -> list[float]:
    """Polyp probabilities of held-out images, exactly as ``rtseg predict`` reports them."""
    from rtseg.evaluate.predict import iter_predictions

    return [p.prob for p in iter_predictions(bundle, [Path(it.image) for it in items],
                                             batch_size=batch_size)]


def run_preset(cfg: RunConfig, split: RunSplit | None = None) -> dict:
    """Run one preset end to end; writes into ``cfg.out``: labels.csv, propagation.json,
    model/ (the bundle), metrics.json, figure.png and run.json. Returns the metrics dict."""
    from rtseg.atomic import write_json
    from rtseg.evaluate.scoring import run_eval
    from rtseg.evaluate.figure import write_figure
    from rtseg.evaluate.metrics import classification_accuracy
    from rtseg.model.bundle import load_bundle, resolve_device
    from rtseg.evaluate.predict import prepare_out_dir
    from rtseg.train.config import TrainConfig
    from rtseg.train.loop import train

    t0 = time.perf_counter()
    preset = cfg.resolved()
    device = resolve_device(cfg.device)
    out = prepare_out_dir(cfg.out)
    if split is None:
        split = holdout_split(open_data(cfg.data), cfg.test_fraction, cfg.n_seeds, cfg.seed)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    prop = propagate_labels(split, preset, out / "labels.csv", cfg.cache, cfg.progress)
    write_json(out / "propagation.json", prop)
    timings["propagate"] = time.perf_counter() - t

    t = time.perf_counter()
    tcfg = TrainConfig(labels=out / "labels.csv", out=out / "model", epochs=cfg.epochs,
                       batch=cfg.batch, size=cfg.size, device=device, seed=cfg.seed,
                       val=cfg.val, init=cfg.init, layer=preset.layer,
                       threshold=preset.threshold, tiles=preset.tiles, workers=cfg.workers,
                       **cfg.extra_train)
    tres = train(tcfg, progress=cfg.progress)
    timings["train"] = time.perf_counter() - t

    t = time.perf_counter()
    bundle = load_bundle(tres.bundle, device)
    pairs = [(it.image, it.mask) for it in split.test_polyp]
    ev = run_eval(bundle, pairs, batch_size=cfg.batch, figure_rows=cfg.figure_rows)
    metrics = ev.metrics
    neg_probs = heldout_probs(bundle, split.test_non_polyp, cfg.batch)
    pos_probs = [r["prob"] for r in metrics.get("per_image", [])]
    extra = {
        "preset": preset.name,
        "split": split.name,
        "non_polyp_specificity": classification_accuracy(neg_probs, [False] * len(neg_probs)),
        "heldout_classification_accuracy": classification_accuracy(
            pos_probs + neg_probs, [True] * len(pos_probs) + [False] * len(neg_probs)),
        "n_non_polyp_images": len(neg_probs),
    }
    per_image = metrics.pop("per_image", None)
    metrics.update(extra)
    if per_image is not None:
        metrics["per_image"] = per_image
    write_json(out / "metrics.json", metrics)
    if ev.rows:
        write_figure(out / "figure.png", ev.rows)
    timings["eval"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0

    write_json(out / "run.json", {
        "preset": preset.to_dict(),
        "data": str(cfg.data),
        "split": split.name,
        "sizes": split.sizes(),
        "device": device,
        "train": {"epochs": cfg.epochs, "batch": cfg.batch, "size": cfg.size, "val": cfg.val,
                  "seed": cfg.seed, "init": str(cfg.init) if cfg.init else None,
                  "best_epoch": tres.best_epoch, "val_accuracy": tres.val_accuracy,
                  "seconds": round(tres.seconds, 3)},
        "propagation": {k: prop.get(k) for k in ("labeled", "propagated", "labeled_per_class",
                                                  "stop_reason", "message")},
        "propagation_accuracy": (prop.get("truth") or {}).get("accuracy"),
        "scores": {k: metrics[k] for k in ("accuracy", "jaccard", "dice", "f1", "recall",
                                           "precision", "n_images")},
        "timing_s": {k: round(v, 3) for k, v in timings.items()},
    })
    return metrics
