"""The recipe's data: the network whose features are cached (:func:`manifest`), the data
folder's items (:func:`load_all`), the items of a training selection (seeds, the rest, the
tune set), the in-domain negative views (tiles of the seed images outside their masks) and
the frozen backbone's features of every image used, computed once and cached
(:class:`FeatureStore`, :func:`open_store`).

The cache: ``CACHE/<label>.cpu-resize-<size>.npz`` (224: ``.cpu-resize.npz``) per source label (``kvasir``, ``cvc``, ``pg_neg``,
``pg_pos``, ``non_polyp``, ``bkai``) and per set of seed tiles (``tiles-<hash>``); a file is
reused when it holds exactly the keys asked for."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from pathlib import Path

import numpy as np

from rtseg.imageio import read_image, read_mask
from rtseg.model.active_area import Box
from rtseg.model.arch import LITE_MEAN, LITE_STD
from rtseg.model.head import HeadConfig
from rtseg.model.manifest import Manifest
from rtseg.recipes.layout import DataFolder, Item, _h
from rtseg.train.probe import Cached, extract

ARCH = "efficientnet-lite1"
#: the network's input size: 288 x 288 called more of both held-out PolypGen centres' polyp-free
#: frames right than 224 (0.864 / 0.888 vs 0.736-0.788 / 0.808-0.836), the rest within a run's spread
SIZE = 288
UNTAGGED_SIZE = 224  # feature cache files from before the input size could change carry no size

SEEDS = {"kvasir": 70, "cvc": 30}
#: how network views are made (part of a cached feature file's name): "cpu-resize" = each view
#: resized once on the CPU as the segmenters do (rtseg.model.active_area.network_view)
VIEWS_VERSION = "cpu-resize"


def manifest(gate: bool = True, agree: bool = False, size: int = SIZE) -> Manifest:
    """The recipe's model settings (ImageNet EfficientNet-Lite1 at ``size``, active area, the
    head fed by its Grad-CAM at "head"); the shipped frame rule is ``agree``."""
    return Manifest(arch=ARCH, input_size=int(size), mean=LITE_MEAN, std=LITE_STD, fov_mask=True,
                    active_area=True, cam_layer="head", threshold="above 0.5",
                    head=HeadConfig(gate=gate, agree=agree).to_dict())


def load_all(data: Path, crops: int = 600) -> dict[str, list[Item]]:
    """Every item of the data folder by source; the old non-polyp crops: the first ``crops``
    (scored by the cross-validation, never trained on)."""
    df = DataFolder.open(data)
    return {"kvasir": df.kvasir, "cvc": df.cvc, "pg_neg": df.pg_neg, "pg_pos": df.pg_pos,
            "non_polyp": ordered(df.non_polyp)[:crops], "bkai": df.bkai}


def open_store(items: dict[str, list[Item]], cache: Path | None, size: int = SIZE) -> "FeatureStore":
    """The ImageNet network's features of every item at input ``size`` (computed once; kept
    under ``cache``)."""
    from rtseg.model.bundle import build_model

    m = manifest(size=size)
    model = build_model(ARCH, pretrained=True).eval()
    store = FeatureStore(model, m, cache)
    for src, its in items.items():
        store.add([str(it.image) for it in its], read_image, src)
    # seed-tile candidates: the first images of every source, in seed order, per fold
    store.tile_keys = {}
    return store


def ordered(items: list[Item]) -> list[Item]:
    return sorted(items, key=lambda it: _h(str(it.image.name), 1))


def grid_cells(h: int, w: int, grid: int) -> list[tuple[int, slice, slice]]:
    """(index ``grid * i + j``, rows, columns) of the ``grid`` x ``grid`` cells of an h x w view."""
    return [(grid * i + j, slice(i * h // grid, (i + 1) * h // grid), slice(j * w // grid, (j + 1) * w // grid))
            for i in range(grid) for j in range(grid)]


def view_tiles(img: np.ndarray, grid: int, mask: np.ndarray | None = None) -> dict[int, np.ndarray]:
    """The lit ``grid`` x ``grid`` tiles of the image's active area (index ``grid * i + j``),
    leaving out any tile that holds a pixel of ``mask`` (full-image bool) when one is given."""
    from rtseg.model.active_area import prepare

    view, box = prepare(img, True)
    mk = mask[box.y0:box.y1, box.x0:box.x1] if mask is not None else None
    h, w = view.shape[:2]
    out = {}
    for k, ys, xs in grid_cells(h, w, grid):
        tile = view[ys, xs]
        # a tile that is mostly black border says nothing
        if (mk is None or not mk[ys, xs].any()) and (tile.max(axis=2) > 30).mean() > 0.6:
            out[k] = np.ascontiguousarray(tile)
    return out


def seed_tiles(img: np.ndarray, mask: np.ndarray, grid: int = 3) -> list[np.ndarray]:
    """Tiles of the image's active area that hold no polyp pixel (in-domain negatives)."""
    return list(view_tiles(img, grid, mask).values())


class FeatureStore:
    """Features of every image used, computed once (and kept on disk under ``cache``)."""

    def __init__(self, model, m: Manifest, cache: Path | None) -> None:
        self.model, self.m, self.cache = model, m, cache
        self.index: dict[str, int] = {}
        self.parts: list[Cached] = []
        self.data: Cached | None = None

    def add(self, keys: list[str], loader, label: str) -> None:
        keys = [k for k in keys if k not in self.index]
        if not keys:
            return
        size = "" if self.m.input_size == UNTAGGED_SIZE else f"-{self.m.input_size}"
        f = self.cache / f"{label}.{VIEWS_VERSION}{size}.npz" if self.cache else None
        if f is not None and f.is_file():
            try:
                z = np.load(f, allow_pickle=True)
                if list(z["keys"]) == keys:
                    self._append(keys, Cached(z["gap"], z["head"], [z[f"f{i}"] for i in range(3)],
                                              [Box(*b) for b in z["boxes"]]))
                    return
            except Exception as exc:  # a damaged cache file (numpy/zipfile raise many types)
                print(f"  feature cache {f} unreadable ({type(exc).__name__}): recomputing", flush=True)
        t = time.time()
        out = []
        for s in range(0, len(keys), 64):
            imgs = [loader(k) for k in keys[s:s + 64]]
            out.append(extract(self.model, self.m, imgs, self.m.head["features"]))
        c = Cached.concat(out)
        print(f"  features of {len(keys)} {label}: {time.time() - t:.0f} s", flush=True)
        if f is not None:
            f.parent.mkdir(parents=True, exist_ok=True)
            np.savez(f, keys=np.array(keys), gap=c.gap, head=c.head,
                     **{f"f{i}": x for i, x in enumerate(c.feats)},
                     boxes=np.array([b.as_tuple() for b in c.boxes]))
        self._append(keys, c)

    def _append(self, keys: list[str], c: Cached) -> None:
        base = len(self.index)
        for i, k in enumerate(keys):
            self.index[k] = base + i
        self.parts.append(c)
        self.data = None

    def get(self, keys: list[str]) -> Cached:
        if self.data is None:
            self.data = Cached.concat(self.parts)
        return self.data.take([self.index[k] for k in keys])


def add_tiles(store: FeatureStore, seeds: list[Item]) -> None:
    """Features of the seed images' polyp-free tiles (``store.tile_keys``: image -> tile keys)."""
    keys, tiles = [], []
    for it in seeds:
        k = str(it.image)
        if k in store.tile_keys:
            continue
        ts = seed_tiles(read_image(it.image), read_mask(it.mask))
        store.tile_keys[k] = [f"{k}#t{i}" for i in range(len(ts))]
        keys += store.tile_keys[k]
        tiles += ts
    if keys:
        lut = dict(zip(keys, tiles))
        tag = hashlib.sha1("\n".join(keys).encode()).hexdigest()[:12]
        store.add(keys, lambda key: lut[key], f"tiles-{tag}")


def seed_counts(train: dict[str, list[Item]]) -> dict[str, int]:
    """How many seed masks each masked source of a training selection gives: :data:`SEEDS`, or,
    where a source is held out, its share moved to the others (never more masks in all)."""
    here = [s for s in SEEDS if train.get(s)]
    if len(here) == len(SEEDS) or not here:
        return dict(SEEDS)
    total, part = sum(SEEDS.values()), sum(SEEDS[s] for s in here)
    out = {s: total * SEEDS[s] // part for s in here}
    out[here[0]] += total - sum(out.values())
    return out


def rest_of(train: dict[str, list[Item]], seeds: list[Item] | None = None) -> list[Item]:
    """The Kvasir-SEG and CVC-ClinicDB images of a training selection that are not seeds
    (``seeds``: the fit's; None = :func:`seeds_of`)."""
    if seeds is None:
        n = seed_counts(train)
        return [it for s in SEEDS for it in ordered(train.get(s, []))[n.get(s, 0):]]
    used = {str(it.image) for it in seeds}
    return [it for s in SEEDS for it in ordered(train.get(s, [])) if str(it.image) not in used]


def image_positives(train: dict[str, list[Item]]) -> list[Item]:
    """The polyp frames of a training selection with an image label only (no mask): PolypGen's,
    then BKAI-IGH's."""
    return list(train.get("pg_pos", [])) + list(train.get("bkai", []))


def seeds_of(train: dict[str, list[Item]]) -> list[Item]:
    """The seed images of a training selection (the only masks the recipe reads)."""
    n = seed_counts(train)
    return [it for s in SEEDS for it in ordered(train.get(s, []))[:n.get(s, 0)]]


# Scoring only: PolypGen's evaluation-only masks are read to score held-out frames, never by a fit.
NO_POLYP = "pg_no_polyp"  # held-out PolypGen polyp-sequence frames whose evaluation mask is empty


def evaluation_mask(root: Path, it: Item) -> Path | None:
    """The evaluation-only mask of a PolypGen polyp frame, where the data folder has one."""
    p = root / "polypgen" / "positive-masks" / f"{it.image.stem}.png"
    return p if p.is_file() else None


def set_apart(pos: list[Item], root: Path) -> tuple[list[Item], list[Item]]:
    """(held-out PolypGen polyp frames with a visible polyp, those whose evaluation mask is
    empty), each carrying its evaluation-only mask (none where the data folder has none)."""
    pos = [dataclasses.replace(it, mask=evaluation_mask(root, it)) for it in pos]
    shows = [it.mask is None or bool(read_mask(it.mask).any()) for it in pos]
    return [it for it, s in zip(pos, shows) if s], [it for it, s in zip(pos, shows) if not s]
