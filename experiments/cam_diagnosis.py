"""Where a model's masks go wrong: thresholding, or localisation?

    python experiments/cam_diagnosis.py --images DIR --masks DIR [--model BUNDLE] [--json FILE]

For every image with a mask it computes the bundle's Grad-CAM (its CAM layer) and reports,
as per-image means (Medico 2021 rules):

- Dice / Jaccard of the bundle's own masks (its threshold and clean-up);
- the *oracle-threshold* Dice: the best of thresholds 0.05, 0.10, ... 0.95 chosen per image
  with the true mask (an upper bound for any threshold policy on this CAM);
- how often the CAM's peak lies inside the polyp, and how often the mask misses it (Dice < 0.05);
- the median area of predicted and true masks (fraction of the image);
- a fixed centred disc (radius ``--disc`` x the shorter side) as a no-model reference;
- the CAM times a centred Gaussian (sigma ``--prior-sigma`` x the side), with the best single
  threshold for all images: how much a framing prior (polyps are usually centred in still
  images) adds; rtseg does not ship such a prior (it would bias live video to the centre);
- the classifier on in-domain polyp-free 2 x 2 tiles of the same images (tiles with no mask
  pixel): how many it calls polyp. A high rate means it learned the look of the polyp
  datasets (domain cues) rather than polyps, which also makes its CAMs broad.

If the oracle-threshold Dice is low and the peak often lies outside the polyp, better
thresholds or clean-up cannot help: the classifier must localise better.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import numpy as np

from rtseg.errors import UserError

THRESHOLDS = np.round(np.arange(0.05, 0.96, 0.05), 2)


def centred_disc(hw: tuple[int, int], radius: float) -> np.ndarray:
    h, w = hw
    yy, xx = np.mgrid[0:h, 0:w]
    r = radius * min(h, w)
    return (yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2 <= r * r


def centre_prior(hw: tuple[int, int], sigma: float) -> np.ndarray:
    h, w = hw
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    d2 = ((yy - (h - 1) / 2) / h) ** 2 + ((xx - (w - 1) / 2) / w) ** 2
    return np.exp(-d2 / (2 * sigma * sigma))


def diagnose(bundle, pairs, disc: float = 0.25, batch: int = 16, prior_sigma: float = 0.2) -> dict:
    from rtseg.model.cam import cam_images, resize_to
    from rtseg.imageio import read_image, read_mask
    from rtseg.evaluate.metrics import image_scores
    from rtseg.model.postprocess import refine
    from rtseg.model.tiles import split_tiles

    m = bundle.manifest
    policy = m.threshold
    steps = tuple(m.postprocess)
    rows, free_tiles = [], []
    for s in range(0, len(pairs), batch):
        chunk = pairs[s:s + batch]
        images = [read_image(p.image) for p in chunk]
        res = cam_images(bundle, images, batch_size=batch)
        truths = [read_mask(p.mask) for p in chunk]
        for img, truth in zip(images, truths):
            if truth.shape == img.shape[:2]:
                free_tiles += [t for t, mt in zip(split_tiles(img), split_tiles(truth)) if not mt.any()]
        for p, img, cam, truth in zip(chunk, images, res.cams, truths):
            hw = truth.shape
            c = np.clip(resize_to(cam, hw), 0.0, 1.0)
            own = refine(np.asarray(policy.apply(c), dtype=bool), steps)
            sc = image_scores(own, truth)
            cp = c * centre_prior(hw, prior_sigma)
            cp = cp / (cp.max() + 1e-7)
            prior = [image_scores(refine(cp > t, steps), truth)["dice"] for t in THRESHOLDS]
            oracle = max(image_scores(refine(c > t, steps), truth)["dice"] for t in THRESHOLDS)
            peak = np.unravel_index(int(np.argmax(c)), hw)
            rows.append({
                "image": str(p.image), "dice": sc["dice"], "jaccard": sc["jaccard"],
                "oracle_dice": oracle, "peak_inside": bool(truth[peak]),
                "pred_area": float(own.mean()), "true_area": float(truth.mean()),
                "disc_dice": image_scores(centred_disc(hw, disc), truth)["dice"],
                "prior_dice": prior,
            })
    if not rows:
        raise UserError("no image/mask pairs")
    free_probs = (cam_images(dataclasses.replace(bundle, manifest=m.replace(tiles=False)), free_tiles,
                             batch_size=batch).prob if free_tiles else np.zeros(0))
    mean = (lambda k: float(np.mean([r[k] for r in rows])))
    return {
        "n_images": len(rows), "layer": str(m.cam_layer), "threshold": str(policy),
        "postprocess": list(steps), "disc_radius": disc,
        "dice": mean("dice"), "jaccard": mean("jaccard"), "oracle_threshold_dice": mean("oracle_dice"),
        "peak_inside_rate": mean("peak_inside"),
        "missed_rate": float(np.mean([r["dice"] < 0.05 for r in rows])),
        "pred_area_median": float(np.median([r["pred_area"] for r in rows])),
        "true_area_median": float(np.median([r["true_area"] for r in rows])),
        "disc_dice": mean("disc_dice"), **best_prior(rows, prior_sigma),
        "polyp_free_tiles": len(free_tiles),
        "polyp_free_tiles_called_polyp": float(np.mean(free_probs >= 0.5)) if free_tiles else None,
        "per_image": rows,
    }


def best_prior(rows: list[dict], sigma: float) -> dict:
    per_t = np.mean([r.pop("prior_dice") for r in rows], axis=0)
    k = int(np.argmax(per_t))
    return {"prior_sigma": sigma, "prior_threshold": float(THRESHOLDS[k]), "prior_dice": float(per_t[k])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", required=True)
    ap.add_argument("--masks", required=True)
    ap.add_argument("--model", default=None, help="bundle folder (default: the shipped model)")
    ap.add_argument("--disc", type=float, default=0.25, help="centred disc radius / shorter side")
    ap.add_argument("--prior-sigma", type=float, default=0.2,
                    help="centred Gaussian sigma / side for the framing-prior row")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    from rtseg.atomic import write_json
    from rtseg.imageio import pair_images_masks
    from rtseg.model.bundle import resolve_bundle

    try:
        bundle = resolve_bundle(args.model)
        pairs, _ = pair_images_masks(args.images, args.masks)
        r = diagnose(bundle, pairs, args.disc, prior_sigma=args.prior_sigma)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    t = Table(title=f"CAM diagnosis: {r['n_images']} images, layer {r['layer']}, "
                    f"{r['threshold']}, clean-up {r['postprocess'] or 'none'}")
    t.add_column("measure")
    t.add_column("value", justify="right")
    for label, key, fmt in (("Dice (the bundle's masks)", "dice", "{:.3f}"),
                            ("Jaccard", "jaccard", "{:.3f}"),
                            ("Dice, best threshold per image (oracle)", "oracle_threshold_dice", "{:.3f}"),
                            ("CAM peak inside the polyp", "peak_inside_rate", "{:.1%}"),
                            ("masks that miss (Dice < 0.05)", "missed_rate", "{:.1%}"),
                            ("median predicted area", "pred_area_median", "{:.3f}"),
                            ("median true area", "true_area_median", "{:.3f}"),
                            (f"centred disc r={args.disc:g}, Dice", "disc_dice", "{:.3f}"),
                            (f"CAM x centred Gaussian s={args.prior_sigma:g}, best threshold, Dice",
                             "prior_dice", "{:.3f}")):
        t.add_row(label, fmt.format(r[key]))
    if r["polyp_free_tiles"]:
        t.add_row(f"polyp-free tiles called polyp ({r['polyp_free_tiles']})",
                  f"{r['polyp_free_tiles_called_polyp']:.1%}")
    Console().print(t)
    if args.json:
        write_json(args.json, r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
