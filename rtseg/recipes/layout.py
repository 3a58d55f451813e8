"""The development data layout (``../shared/data``) and reproducible splits of it.

Layout (see the data README): ``kvasir-seg/images|masks/*.jpg`` (polyp images with masks),
``cvc-clinicdb/images|masks/N.png`` + ``sequences.csv`` (video frames, every frame a polyp;
frames of one sequence are one video), ``non-polyp/*.jpg`` (normal mucosa crops),
``polypgen/negative|positive/*.jpg`` + CSVs (in-domain polyp-free frames of 14 sequences;
polyp frames without masks).

Splits never put frames of one CVC-ClinicDB sequence on both sides, and are deterministic:
items are ordered by a hash of their name, not by the file system.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from rtseg.errors import UserError
from rtseg.imageio import list_images, pair_images_masks


@dataclass(frozen=True)
class Item:
    image: Path
    mask: Path | None  # None for non-polyp crops
    label: str  # "polyp" | "non_polyp"
    source: str  # "kvasir" | "cvc" | "non_polyp" | "pg_neg" | "pg_pos" | "bkai"
    group: str  # split unit: the image itself, or the CVC sequence
    hospital: str = ""  # where the frame was recorded ("kvasir", "cvc", "pg-A", "pg-B", "bkai"): the hold-out unit


def _h(text: str, seed: int) -> str:
    return hashlib.sha1(f"{seed}:{text}".encode()).hexdigest()


@dataclass
class DataFolder:
    root: Path
    kvasir: list[Item] = field(default_factory=list)
    cvc: list[Item] = field(default_factory=list)
    non_polyp: list[Item] = field(default_factory=list)
    pg_neg: list[Item] = field(default_factory=list)  # PolypGen polyp-free, group = sequence
    pg_pos: list[Item] = field(default_factory=list)  # PolypGen polyp frames, no masks
    bkai: list[Item] = field(default_factory=list)  # BKAI-IGH NeoPolyp polyp frames, no masks

    @classmethod
    def open(cls, root: str | Path) -> "DataFolder":
        root = Path(root)
        if not root.is_dir():
            raise UserError(f"data folder not found: {root}")
        df = cls(root)
        kv = root / "kvasir-seg"
        if kv.is_dir():
            pairs, _ = pair_images_masks(kv / "images", kv / "masks")
            df.kvasir = [Item(p.image, p.mask, "polyp", "kvasir", p.image.stem, "kvasir") for p in pairs]
        cvc = root / "cvc-clinicdb"
        if cvc.is_dir():
            seq_csv = cvc / "sequences.csv"
            if not seq_csv.is_file():
                raise UserError(f"{cvc} has no sequences.csv")
            with open(seq_csv, newline="") as fh:
                for row in csv.DictReader(fh):
                    df.cvc.append(Item(cvc / row["image"], cvc / row["mask"], "polyp", "cvc",
                                       f"cvc-seq-{row['sequence']}", "cvc"))
        npd = root / "non-polyp"
        if npd.is_dir():
            df.non_polyp = [Item(p, None, "non_polyp", "non_polyp", p.stem)
                            for p in list_images(npd, "non-polyp folder")]
        pg = root / "polypgen"
        for kind, label, attr in (("negative", "non_polyp", "pg_neg"), ("positive", "polyp", "pg_pos")):
            table = pg / f"{kind}.csv"
            if not table.is_file():
                continue
            with open(table, newline="") as fh:
                rows = list(csv.DictReader(fh))
            if rows and not {"image", "centre", "sequence"} <= set(rows[0]):
                raise UserError(f"{table} needs the columns image, centre, sequence "
                                "(see the data README)")
            items = [Item(pg / kind / r["image"], None, label, attr,
                          f"pg-{r['centre']}-{r['sequence']}" if r.get("sequence") else Path(r["image"]).stem,
                          f"pg-{r['centre']}")
                     for r in rows if (pg / kind / r["image"]).is_file()]
            setattr(df, attr, items)
        bk = root / "bkai-neopolyp" / "images"
        if bk.is_dir():
            df.bkai = [Item(p, None, "polyp", "bkai", p.stem, "bkai") for p in list_images(bk, "BKAI-IGH folder")]
        if not (df.kvasir or df.cvc) or not df.non_polyp:
            raise UserError(f"{root} needs kvasir-seg/ or cvc-clinicdb/, and non-polyp/ "
                            "(see the data README)")
        return df


def split_groups(items: list[Item], fractions: dict[str, float], seed: int = 0) -> dict[str, list[Item]]:
    """Split items by group into named parts of about the given fractions (deterministic)."""
    groups: dict[str, list[Item]] = {}
    for it in items:
        groups.setdefault(it.group, []).append(it)
    order = sorted(groups, key=lambda g: _h(g, seed))
    total = len(items)
    out: dict[str, list[Item]] = {k: [] for k in fractions}
    names = list(fractions)
    bounds, acc = [], 0.0
    for k in names:
        acc += fractions[k]
        bounds.append(acc * total)
    n = 0
    for g in order:
        part = next((k for k, b in zip(names, bounds) if n < b - 1e-9), names[-1])
        out[part].extend(groups[g])
        n += len(groups[g])
    return out


def group_folds(items: list[Item], k: int, seed: int = 0) -> list[list[Item]]:
    """K folds of about equal size; a group (a CVC sequence) never spans two folds."""
    if k < 2:
        raise UserError("cross-validation needs at least 2 folds")
    groups: dict[str, list[Item]] = {}
    for it in items:
        groups.setdefault(it.group, []).append(it)
    folds: list[list[Item]] = [[] for _ in range(k)]
    # largest groups first, each into the currently smallest fold (ties by hash order)
    for g in sorted(groups, key=lambda g: (-len(groups[g]), _h(g, seed))):
        min(folds, key=len).extend(groups[g])
    return folds


def recipe_parser(prog: str, doc: str | None, stages: list[str]):
    """The command line every recipe starts from: its stage (where it has ``stages``) and
    ``--data`` (this layout)."""
    import argparse

    ap = argparse.ArgumentParser(prog=prog, description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    if stages:
        ap.add_argument("stage", choices=stages)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    return ap
