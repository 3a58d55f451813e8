"""Training data: the labels CSV, tile references, an on-device image cache, augmentation.

Labels CSV (as written by ``rtseg propagate``): columns ``path,label[,source,round]``; ``label``
is ``polyp`` or ``non_polyp``; a ``path`` may name one quarter of an image as ``img.jpg#t2``
(2 x 2 tiles: t0 top-left, t1 top-right, t2 bottom-left, t3 bottom-right); relative paths
resolve against the CSV's folder.

Pipeline (built for a GPU, sane on a CPU): every image is decoded once, cropped to its tile,
resized to the network input size with the very resize :func:`rtseg.model.preprocess.frames_to_input`
does (bilinear, ``align_corners=False``, no antialias) and kept in one ``uint8 [N, S, S, 3]``
tensor on the training device. Without augmentation a cached image therefore gives exactly the
network input inference gives for that image (up to uint8 rounding). Augmentation runs on whole
batches on the device (:func:`augment_batch`): flips, rotation (90-degree steps plus a small
angle), a small zoom and shift (one ``grid_sample``), then brightness, contrast, saturation
and hue jitter; the network input is then built by ``frames_to_input`` with the manifest's
size, mean, std and common field-of-view mask.
"""

from __future__ import annotations

import csv
import math
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from rtseg.errors import UserError
from rtseg.model.tiles import crop_tile, parse_tile_path, split_tiles, tile_box, tile_ref  # noqa: F401  (re-exported)

REQUIRED_COLUMNS = ("path", "label")
MAX_LISTED = 5  # how many offending rows an error message names
from rtseg.imageio import CLASS_NAMES, decode_image

# ----------------------------------------------------------------------------------------
# labels CSV
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LabeledItem:
    ref: str  # the path as written in the CSV (with #tN)
    path: Path  # resolved image file
    tile: int | None
    label: str  # "polyp" / "non_polyp"
    source: str = ""
    round: str = ""

    @property
    def target(self) -> int:
        return CLASS_NAMES.index(self.label)


def _listed(values: Sequence[str], total: int | None = None) -> str:
    total = len(values) if total is None else total
    shown = ", ".join(values[:MAX_LISTED])
    return shown + (f" and {total - MAX_LISTED} more" if total > MAX_LISTED else "")


def read_labels_csv(path: str | os.PathLike, check_files: bool = True) -> list[LabeledItem]:
    """Read and validate a labels CSV; raise UserError (one line) for any problem.

    Checks: the file exists and is a CSV with ``path`` and ``label`` columns, at least one
    row, labels in {polyp, non_polyp}, well-formed tile references, no path given two
    different labels nor listed twice, and (``check_files``) every image file exists.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"labels CSV not found: {path}")
    if not path.is_file():
        raise UserError(f"labels CSV is not a file: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or exc
        raise UserError(f"cannot read labels CSV {path}: {why}") from None
    try:
        reader = csv.DictReader(text.splitlines())
        fields = [f.strip().lower() for f in (reader.fieldnames or [])]
        rows = list(reader)
    except csv.Error as exc:
        raise UserError(f"labels CSV {path} is not valid CSV: {exc}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in fields]
    if missing:
        have = ", ".join(f for f in fields if f) or "none"
        raise UserError(f"labels CSV {path} lacks column(s) {', '.join(missing)} "
                        f"(needs path,label[,source,round]; has {have})")
    base = path.absolute().parent
    items: list[LabeledItem] = []
    bad_labels: list[str] = []
    bad_tiles: list[str] = []
    seen: dict[str, str] = {}
    first_line_of: dict[str, int] = {}
    conflicts: list[str] = []
    for lineno, raw in enumerate(rows, start=2):
        row = {(k or "").strip().lower(): (v or "").strip() if isinstance(v, str) else ""
               for k, v in raw.items() if k is not None}
        ref, label = row.get("path", ""), row.get("label", "").lower()
        if not ref and not label and not any(row.values()):
            continue  # blank line
        if not ref:
            bad_tiles.append(f"line {lineno}: empty path")
            continue
        if label not in CLASS_NAMES:
            bad_labels.append(f"'{row.get('label', '')}' (line {lineno})")
            continue
        try:
            file, tile = parse_tile_path(ref)
        except UserError:
            bad_tiles.append(f"'{ref}' (line {lineno})")
            continue
        resolved = file if file.is_absolute() else base / file
        key = tile_ref(resolved, tile)
        if key in seen and seen[key] != label:
            conflicts.append(ref)
        elif key in seen:
            raise UserError(f"labels CSV {path} line {lineno}: {ref} is listed again (first "
                            f"on line {first_line_of[key]}); each image once")
        seen[key] = label
        first_line_of.setdefault(key, lineno)
        items.append(LabeledItem(ref, resolved, tile, label, row.get("source", ""),
                                 row.get("round", "")))
    if bad_labels:
        raise UserError(f"labels CSV {path} has unknown label(s) {_listed(bad_labels)}; "
                        f"use {' or '.join(reversed(CLASS_NAMES))}")
    if bad_tiles:
        raise UserError(f"labels CSV {path} has bad path(s) {_listed(bad_tiles)} "
                        "(tile references are IMAGE#t0..IMAGE#t3)")
    if conflicts:
        raise UserError(f"labels CSV {path} gives both labels to {_listed(conflicts)}")
    if not items:
        raise UserError(f"labels CSV {path} has no rows")
    if check_files:
        absent = [it.ref for it in items if not it.path.is_file()]
        if absent:
            raise UserError(f"labels CSV {path}: {len(absent)} image(s) not found "
                            f"(relative to {base}): {_listed(absent)}")
    return items


def require_classes(items: Sequence[LabeledItem], source: str = "labels CSV") -> dict[str, int]:
    """Counts per class; UserError if a class has no image (the classifier needs both)."""
    counts = Counter(it.label for it in items)
    out = {c: counts.get(c, 0) for c in CLASS_NAMES}
    empty = [c for c, n in out.items() if n == 0]
    if empty:
        raise UserError(f"{source} has no '{empty[0]}' images; training needs both classes "
                        f"({', '.join(f'{c}: {n}' for c, n in out.items())})")
    return out


def summarize(items: Sequence[LabeledItem]) -> dict:
    """Counts per class, per source (and class), per round, and the number of tiles."""
    classes = {c: 0 for c in CLASS_NAMES}
    sources: dict[str, dict[str, int]] = {}
    rounds: dict[str, int] = {}
    for it in items:
        classes[it.label] += 1
        s = sources.setdefault(it.source or "unspecified", {c: 0 for c in CLASS_NAMES})
        s[it.label] += 1
        if it.round:
            rounds[it.round] = rounds.get(it.round, 0) + 1
    return {"images": len(items), "classes": classes, "sources": sources, "rounds": rounds,
            "tiles": sum(it.tile is not None for it in items)}


def stratified_split(labels: Sequence[int], n_val: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified hold-out: (train indices, val indices), both sorted.

    Each class contributes to the validation set in proportion to its size (largest
    remainder), keeps at least one training image, and, where ``n_val`` allows, gets at least
    one validation image. UserError if ``n_val`` cannot be met.
    """
    labels = np.asarray(labels)
    n = len(labels)
    classes = sorted(set(labels.tolist()))
    if n_val < 0:
        raise UserError(f"--val must be >= 0, not {n_val}")
    if n_val == 0:
        return np.arange(n), np.zeros(0, dtype=np.int64)
    most = n - len(classes)
    if n_val > most:
        raise UserError(f"--val {n_val} is too large for {n} labelled images: every class needs "
                        f"a training image (use --val {max(most, 0)} or less)")
    rng = np.random.default_rng(seed)
    members = {c: rng.permutation(np.flatnonzero(labels == c)) for c in classes}
    exact = {c: n_val * len(members[c]) / n for c in classes}
    quota = {c: int(math.floor(exact[c])) for c in classes}
    for c in sorted(classes, key=lambda c: exact[c] - quota[c], reverse=True):
        if sum(quota.values()) >= n_val:
            break
        quota[c] += 1
    if n_val >= len(classes):  # every class measured
        for c in classes:
            if quota[c] == 0:
                donor = max(classes, key=lambda d: quota[d])
                quota[donor] -= 1
                quota[c] += 1
    for c in classes:  # keep a training image per class; move the excess elsewhere
        spare = quota[c] - (len(members[c]) - 1)
        if spare > 0:
            quota[c] -= spare
            for d in classes:
                room = len(members[d]) - 1 - quota[d]
                take = min(room, spare)
                quota[d] += take
                spare -= take
    val = np.sort(np.concatenate([members[c][:quota[c]] for c in classes]).astype(np.int64))
    train = np.setdiff1d(np.arange(n), val)
    return train, val


# ----------------------------------------------------------------------------------------
# image cache
# ----------------------------------------------------------------------------------------
def resize_like_preprocess(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [size, size, 3] with the resize of ``frames_to_input``."""
    import torch
    import torch.nn.functional as F

    if image.shape[0] == size and image.shape[1] == size:
        return np.ascontiguousarray(image)
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x[0].permute(1, 2, 0).round_().clamp_(0, 255).to(torch.uint8).numpy()


def _load_one(item: LabeledItem, size: int, active_area: bool = False) -> np.ndarray | str:
    try:
        data = np.fromfile(str(item.path), dtype=np.uint8)
    except OSError as exc:
        return f"{item.ref} ({exc.strerror or exc})"
    img = decode_image(data)
    if img is None:
        return f"{item.ref} (not a readable image)"
    if active_area:  # the field of view first, as at inference (then the tile of it)
        from rtseg.model.active_area import prepare

        img, _ = prepare(img)
    img = crop_tile(img, item.tile)
    if img.shape[0] < 2 or img.shape[1] < 2:
        return f"{item.ref} (tile too small: {img.shape[1]}x{img.shape[0]})"
    return resize_like_preprocess(img, size)


def load_images(items: Sequence[LabeledItem], size: int, workers: int | None = None,
                on_progress: Callable[[int], None] | None = None, active_area: bool = False):
    """Decode every item once (tiles cropped) into one ``uint8 [N, size, size, 3]`` CPU tensor.

    Decoding runs on ``workers`` threads (OpenCV and torch release the GIL); the result is in
    ``items`` order whatever the thread count. Unreadable files raise one UserError naming
    the first few.
    """
    import torch

    n = len(items)
    out = torch.empty((n, size, size, 3), dtype=torch.uint8)
    workers = default_workers() if workers is None else max(1, int(workers))
    bad: list[str] = []
    threads = torch.get_num_threads()
    try:
        if workers > 1:
            torch.set_num_threads(1)  # parallel over images, not inside each resize
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for i, res in enumerate(pool.map(lambda it: _load_one(it, size, active_area), items)):
                if isinstance(res, str):
                    bad.append(res)
                else:
                    out[i] = torch.from_numpy(res)
                if on_progress is not None:
                    on_progress(1)
    finally:
        torch.set_num_threads(threads)
    if bad:
        raise UserError(f"{len(bad)} image(s) in the labels cannot be read: {_listed(bad)}")
    return out


def cache_from_arrays(images: Sequence[np.ndarray], size: int):
    """Like :func:`load_images` for in-memory RGB uint8 arrays (benchmarks, tests)."""
    import torch

    return torch.stack([torch.from_numpy(resize_like_preprocess(im, size)) for im in images])


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


# ----------------------------------------------------------------------------------------
# augmentation (batched, on the device)
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AugmentConfig:
    flip: bool = True  # horizontal and vertical flips
    rot90: bool = True  # rotation by a random multiple of 90 degrees
    max_angle: float = 15.0  # plus a uniform small angle in [-max_angle, max_angle] degrees
    zoom: tuple[float, float] = (1.0, 1.15)  # zoom-in range (1 = whole image)
    shift: float = 0.05  # translation, as a fraction of the image side
    brightness: float = 0.2  # factor in [1 - b, 1 + b]
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.03  # rotation of the chroma plane, fraction of a full turn

    def to_dict(self) -> dict:
        from dataclasses import asdict

        d = asdict(self)
        d["zoom"] = list(self.zoom)
        return d


_N_DRAWS = 11


def augment_batch(frames, generator, cfg: AugmentConfig = AugmentConfig()):
    """Randomly augment a batch on its device; uint8 ``[B, H, W, 3]`` RGB -> float 0..255.

    All random numbers of the batch come from one draw on ``generator`` (a ``torch.Generator``
    on the frames' device), so a seeded generator gives a reproducible stream. The result is a
    ``[B, H, W, 3]`` view of an NCHW tensor, ready for ``frames_to_input``.
    """
    import torch
    import torch.nn.functional as F

    b, h, w, _ = frames.shape
    dev = frames.device
    u = torch.rand((b, _N_DRAWS), generator=generator, device=dev)
    x = frames.permute(0, 3, 1, 2).float().div_(255.0)  # [B, 3, H, W] in 0..1

    # --- geometry: one affine warp (output -> input coordinates, normalised [-1, 1]) -------
    angle = (u[:, 0] * 2 - 1) * math.radians(cfg.max_angle)
    if cfg.rot90:
        angle = angle + torch.floor(u[:, 1] * 4).clamp_(max=3) * (math.pi / 2)
    one = torch.ones_like(angle)
    sx = torch.where(u[:, 2] < 0.5, -one, one) if cfg.flip else one
    sy = torch.where(u[:, 3] < 0.5, -one, one) if cfg.flip else one
    lo, hi = cfg.zoom
    zoom = lo + u[:, 4] * (hi - lo)
    tx = (u[:, 5] * 2 - 1) * (2 * cfg.shift)
    ty = (u[:, 6] * 2 - 1) * (2 * cfg.shift)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([
        torch.stack([cos * sx, -sin * sy, tx], 1),
        torch.stack([sin * sx, cos * sy, ty], 1),
    ], 1)  # [B, 2, 3]
    grid = F.affine_grid(theta, [b, 3, h, w], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    # --- colour -------------------------------------------------------------------------
    def factor(col: int, amount: float):
        return (1 + (u[:, col] * 2 - 1) * amount).view(b, 1, 1, 1)

    lum = x.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    x = x * factor(7, cfg.brightness)
    mean = (x * lum).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    x = (x - mean) * factor(8, cfg.contrast) + mean
    gray = (x * lum).sum(1, keepdim=True)
    x = gray + (x - gray) * factor(9, cfg.saturation)
    if cfg.hue:
        # rotate colours about the grey axis (1, 1, 1) / sqrt(3) (Rodrigues)
        phi = (u[:, 10] * 2 - 1) * (cfg.hue * 2 * math.pi)
        c, s = torch.cos(phi).view(b, 1, 1), torch.sin(phi).view(b, 1, 1)
        k = x.new_tensor([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]]) / math.sqrt(3)
        aat = x.new_full((3, 3), 1.0 / 3.0)
        eye = torch.eye(3, device=dev, dtype=x.dtype)
        rot = c * eye + (1 - c) * aat + s * k  # [B, 3, 3]
        x = torch.einsum("bij,bjhw->bihw", rot, x)
    x = x.clamp_(0.0, 1.0).mul_(255.0)
    return x.permute(0, 2, 3, 1)  # [B, H, W, 3] view
