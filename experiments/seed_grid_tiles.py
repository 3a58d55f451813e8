"""In-domain negatives from the seed masks: G x G tiles of the polyp seed images (tried on the b1 model).

    python experiments/seed_grid_tiles.py --work runs/default --out runs/grid3 [--grid 3] [--min-cover 0.3]
                                         [--csv labels.csv]

Takes the recipe's work folder (``python -m rtseg.recipes.paper prepare``): the polyp seed images
(``seeds/polyp``), their masks (``seed_masks``) and the packed whole-image labels
(``pack/labels_whole.csv``). Every seed image is cut into G x G tiles; a tile with no mask
pixel is labeled non-polyp (an in-domain negative: same camera, light and look as the polyp
frames), a tile whose mask covers at least ``--min-cover`` of it is labeled polyp, the rest are
left out. Writes the tiles (256 x 256 JPEGs, ``OUT/images``) and ``OUT/labels.csv`` (``--csv``)
= the whole-image labels plus the tiles, with paths relative to OUT, ready for ``rtseg train
--labels OUT/labels.csv``. With ``--out`` = the pack folder, the pack (and its new CSV) can
travel to a GPU machine as one folder. Only the 100 seed masks are
used, as tile labels (allowed, as in the paper's Run 1).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

import cv2

from rtseg.errors import UserError

FIELDS = ["path", "label", "source", "round", "origin"]


def make_tiles(work: Path, out: Path, grid: int, min_cover: float, size: int = 256,
               csv_name: str = "labels.csv") -> dict:
    from rtseg.atomic import atomic_open
    from rtseg.imageio import list_images, read_image, read_mask

    labels = work / "pack" / "labels_whole.csv"
    if not labels.is_file():
        raise UserError(f"{labels} not found: run python -m rtseg.recipes.paper prepare first")
    with open(labels, newline="") as fh:
        rows = [dict(r, path=(labels.parent / r["path"]).resolve()) for r in csv.DictReader(fh)]
    masks = {p.stem: p for p in list_images(work / "seed_masks", "seed masks folder")}
    (out / "images").mkdir(parents=True, exist_ok=True)
    counts = {"polyp": 0, "non_polyp": 0, "left_out": 0}
    for img_path in list_images(work / "seeds" / "polyp", "polyp seeds folder"):
        if img_path.stem not in masks:
            raise UserError(f"seed {img_path.name} has no mask in {work / 'seed_masks'}")
        im, mk = read_image(img_path), read_mask(masks[img_path.stem])
        if mk.shape != im.shape[:2]:
            raise UserError(f"mask of {img_path.name} is {mk.shape}, image {im.shape[:2]}")
        h, w = mk.shape
        for i in range(grid):
            for j in range(grid):
                ys, ye, xs, xe = i * h // grid, (i + 1) * h // grid, j * w // grid, (j + 1) * w // grid
                cover = float(mk[ys:ye, xs:xe].mean())
                label = "non_polyp" if cover == 0 else "polyp" if cover >= min_cover else None
                if label is None:
                    counts["left_out"] += 1
                    continue
                counts[label] += 1
                name = out / "images" / f"{img_path.stem}_g{grid}_{i}{j}.jpg"
                tile = cv2.resize(im[ys:ye, xs:xe], (size, size), interpolation=cv2.INTER_AREA)
                cv2.imwrite(str(name), cv2.cvtColor(tile, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
                rows.append({"path": name.resolve(), "label": label, "source": "seed",
                             "round": "0", "origin": str(img_path)})
    base = out.resolve()
    for r in rows:  # relative to the CSV's folder: the folder can move as a whole
        r["path"] = Path(os.path.relpath(r["path"], base)).as_posix()
    with atomic_open(out / csv_name, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return {"rows": len(rows), "tiles": counts}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="the recipe's work folder")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--grid", type=int, default=3)
    ap.add_argument("--min-cover", type=float, default=0.3)
    ap.add_argument("--csv", default="labels.csv", help="name of the labels CSV in OUT")
    args = ap.parse_args(argv)
    try:
        if args.grid < 2:
            raise UserError("--grid must be at least 2")
        r = make_tiles(args.work, args.out, args.grid, args.min_cover, csv_name=args.csv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.out / args.csv}: {r['rows']} rows; seed tiles {r['tiles']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
