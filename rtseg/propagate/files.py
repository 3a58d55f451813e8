"""What label propagation (:mod:`rtseg.propagate.kmeans`) reads and writes: image and tile crops
and their features (cached), tile labels from masks, truth CSVs and their report, and the label
and feature CSVs it writes."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from rtseg.errors import UserError
from rtseg.imageio import CLASS_NAMES
from rtseg.model.tiles import parse_tile_path, split_tiles, tile_path  # noqa: F401  (P.tile_path)
from rtseg.propagate.kmeans import CSV_COLUMNS, NON_POLYP, POLYP, PropagationResult


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
    from rtseg.ui import started_bar

    return started_bar(what, total, completed)


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
            line_of: dict[str, int] = {}
            for i, row in enumerate(reader, start=2):
                row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
                if row["label"] not in CLASS_NAMES:
                    raise UserError(f"truth CSV {path} line {i}: label must be polyp or "
                                    f"non_polyp, got {row['label']!r}")
                if row["path"] in line_of:
                    raise UserError(f"truth CSV {path} line {i}: {row['path']} is listed "
                                    f"again (first on line {line_of[row['path']]})")
                line_of[row["path"]] = i
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
