"""The paper's set-up as a recipe, stage by stage as rtseg commands: an efficientnet-b1 classifier
trained from scratch on propagated labels, its Grad-CAM thresholded. It builds the b1 model of
docs/paper.md; the shipped default model is built by :mod:`rtseg.recipes.distill`.

``python -m rtseg.recipes.paper prepare --data ../shared/data --work runs/default``
    split the data (by CVC sequence), pick 100 + 100 seeds, propagate labels to 1,000
    (``rtseg propagate``, whole images and 2x2 tiles), lay out the validation and test
    folders, and pack the training images into a compact cache (``pack/``) that can travel
    to a GPU machine.
``python -m rtseg.recipes.paper train --work runs/default --variant whole --device cuda``
    ``rtseg train`` on a packed labels CSV.
``python -m rtseg.recipes.paper select --work runs/default --variant whole``
    ``rtseg tune`` on the validation folder (CAM layer, threshold, clean-up), then
    ``rtseg eval`` on the Kvasir-SEG and CVC-ClinicDB test folders and the classification
    accuracy on held-out polyp and non-polyp images; writes ``report_<variant>.json``.

Splits (deterministic, by a hash of the name; a CVC-ClinicDB sequence never spans two parts):
Kvasir-SEG 70% train / 10% val / 20% test; CVC-ClinicDB 60/15/25 by sequence; non-polyp
crops 80/5/15. Seeds come from the train part only; masks are used only for tile labels of
seed images (as in the paper's Run 1) and for validation/test scoring.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2

from rtseg.recipes.layout import DataFolder, Item, recipe_parser, split_groups

SPLITS = {
    "kvasir": {"train": 0.70, "val": 0.10, "test": 0.20},
    "cvc": {"train": 0.60, "val": 0.15, "test": 0.25},
    "non_polyp": {"train": 0.80, "val": 0.05, "test": 0.15},
}
SEEDS = {"kvasir": 70, "cvc": 30, "non_polyp": 100}
PACK_SIZE = 256


def _name(it: Item) -> str:
    return f"{it.source}_{it.image.stem}{it.image.suffix.lower()}"


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    os.symlink(src.resolve(), dst)


def rtseg(*args: str) -> None:
    cmd = [sys.executable, "-m", "rtseg", *map(str, args)]
    print("$ rtseg " + " ".join(map(str, args)), flush=True)
    subprocess.run(cmd, check=True)


def prepare(data: Path, work: Path, target: int = 1000, clusters: int = 200) -> None:
    df = DataFolder.open(data)
    parts = {src: split_groups(getattr(df, src), SPLITS[src]) for src in SPLITS}
    if work.exists():
        for sub in ("seeds", "pool", "seed_masks", "val", "test-kvasir", "test-cvc", "test-non-polyp"):
            shutil.rmtree(work / sub, ignore_errors=True)
    truth = []
    for src, n in SEEDS.items():
        train = parts[src]["train"]
        for k, it in enumerate(train):
            is_seed = k < n
            dst = (work / "seeds" / it.label / _name(it)) if is_seed else (work / "pool" / _name(it))
            _link(it.image, dst)
            truth.append((str(dst), it.label))
            if is_seed and it.mask is not None:
                _link(it.mask, work / "seed_masks" / (Path(_name(it)).stem + it.mask.suffix))
    for src in ("kvasir", "cvc"):
        for it in parts[src]["val"]:
            _link(it.image, work / "val" / "images" / _name(it))
            _link(it.mask, work / "val" / "masks" / (Path(_name(it)).stem + it.mask.suffix))
        for it in parts[src]["test"]:
            _link(it.image, work / f"test-{src}" / "images" / _name(it))
            _link(it.mask, work / f"test-{src}" / "masks" / (Path(_name(it)).stem + it.mask.suffix))
    for it in parts["non_polyp"]["test"]:
        _link(it.image, work / "test-non-polyp" / _name(it))
    with open(work / "truth.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label"])
        w.writerows(truth)
    split_info = {src: {k: len(v) for k, v in p.items()} for src, p in parts.items()}
    (work / "splits.json").write_text(json.dumps(split_info, indent=2))
    print(json.dumps(split_info))
    rtseg("propagate", "--labeled", work / "seeds", "--unlabeled", work / "pool", "--clusters", clusters,
          "--target", target, "--out", work / "labels_whole.csv", "--truth", work / "truth.csv",
          "--json", work / "propagate_whole.json")
    rtseg("propagate", "--labeled", work / "seeds", "--unlabeled", work / "pool", "--clusters", clusters,
          "--target", target * 2, "--tiles", "--masks", work / "seed_masks", "--out", work / "labels_tiles.csv",
          "--json", work / "propagate_tiles.json")
    variants = {
        "whole": _rows(work / "labels_whole.csv"),
        # whole images + the 2x2 tiles of the polyp seed images, labeled from their masks
        # (as in the paper's Run 1): in-domain negatives that share the polyp images' look
        "negtiles": _rows(work / "labels_whole.csv") + [
            r for r in _rows(work / "labels_tiles.csv")
            if r["source"] == "seed" and Path(r["path"].partition("#t")[0]).parent.name == "polyp"],
        "tiles": _rows(work / "labels_tiles.csv"),
    }
    pack(variants, work / "pack")


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def pack(variants: dict[str, list[dict]], out: Path, size: int = PACK_SIZE, quality: int = 92) -> None:
    """Resize every image (or tile) of the labels CSVs to size x size JPEGs, one CSV per variant."""
    from rtseg.imageio import read_image
    from rtseg.model.tiles import split_tiles

    shutil.rmtree(out, ignore_errors=True)
    (out / "images").mkdir(parents=True)
    done: dict[str, str] = {}
    for name, rows in variants.items():
        packed = []
        for r in rows:
            ref = r["path"]
            if ref not in done:
                base, _, tile = ref.partition("#t")
                img = read_image(base)
                if tile:
                    img = split_tiles(img)[int(tile)]
                img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
                fn = f"images/{len(done):05d}.jpg"
                cv2.imwrite(str(out / fn), cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, quality])
                done[ref] = fn
            packed.append({**r, "path": done[ref], "origin": ref})
        with open(out / f"labels_{name}.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(packed[0]))
            w.writeheader()
            w.writerows(packed)
        counts = {}
        for r in packed:
            counts[r["label"]] = counts.get(r["label"], 0) + 1
        print(f"pack {name}: {len(packed)} rows {counts}")
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"pack: {len(done)} images, {total / 2**20:.1f} MiB in {out}")


def train(work: Path, variant: str, device: str = "auto", epochs: int = 25, size: int = 224,
          extra: list[str] | None = None) -> Path:
    out = work / "bundles" / variant
    # --precise-bn 0: the shipped model was trained before rtseg train re-estimated the BN
    # statistics after every epoch; pinned so that this recipe reproduces it
    rtseg("train", "--labels", work / "pack" / f"labels_{variant}.csv", "--out", out, "--epochs", epochs,
          "--size", size, "--device", device, "--precise-bn", 0, *(extra or []))
    return out


def select(work: Path, variant: str, device: str = "auto") -> dict:
    b = work / "bundles" / variant
    rtseg("tune", "--model", b, "--images", work / "val" / "images", "--masks", work / "val" / "masks",
          "--write", "--device", device, "--json", work / f"tune_{variant}.json")
    report = {}
    for src in ("kvasir", "cvc"):
        js = work / f"eval_{variant}_{src}.json"
        rtseg("eval", "--model", b, "--images", work / f"test-{src}" / "images", "--masks",
              work / f"test-{src}" / "masks", "--json", js, "--device", device,
              "--figure", work / f"figure_{variant}_{src}.png")
        report[src] = json.loads(js.read_text())
    pred = work / f"pred_{variant}_non_polyp"
    rtseg("predict", "--model", b, "--images", work / "test-non-polyp", "--out", pred, "--device", device)
    with open(pred / "predictions.csv", newline="") as fh:
        probs = [float(r["prob"]) for r in csv.DictReader(fh)]
    report["non_polyp_specificity"] = sum(p < 0.5 for p in probs) / max(1, len(probs))
    (work / f"report_{variant}.json").write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> None:
    ap = recipe_parser("python -m rtseg.recipes.paper", __doc__, ["prepare", "train", "select"])
    ap.add_argument("--work", type=Path, default=Path("runs/default"))
    ap.add_argument("--variant", default="whole")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--size", type=int, default=224)
    a = ap.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    if a.stage == "prepare":
        prepare(a.data, a.work)
    elif a.stage == "train":
        train(a.work, a.variant, a.device, a.epochs, a.size)
    else:
        print(json.dumps(select(a.work, a.variant, a.device), indent=2))


if __name__ == "__main__":
    main()
