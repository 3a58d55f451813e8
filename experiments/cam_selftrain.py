"""CAM refinement by self-training, measured on a validation folder (tried on the b1 model).

    python experiments/cam_selftrain.py --labels LABELS.csv --images VAL/images --masks VAL/masks
                                       [--model BUNDLE] [--epochs 10] [--json FILE]

The classifier stays frozen. Its Grad-CAM on the training images (``--labels``: a labels CSV
as ``rtseg train`` reads it; only images labeled polyp and called polyp take part) gives
pseudo-masks: foreground = the largest component of CAM >= ``--fg``; background = the
``--bg`` lowest fraction of CAM values inside the field of view; the rest is ignored. A small
head on frozen features of blocks 7, 15 and 22 and the head (1x1 reductions, two 3x3
convolutions, at 1/8 of the input size) learns those pseudo-masks with a balanced BCE. Its
masks (threshold, largest component) are scored on the validation pairs beside the CAM's own.
No pixel mask is used for training.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from rtseg.errors import UserError

BLOCKS = (7, 15, 22)
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def extract(bundle, images, batch: int = 8) -> dict:
    """Frozen features (fp16), head Grad-CAM and prob for uint8 RGB images."""
    from rtseg.model.gradcam import GradCAM
    from rtseg.model.preprocess import images_to_input

    model, m = bundle.model, bundle.manifest
    store: dict = {}
    hooks = [model._blocks[i].register_forward_hook(
        lambda mod, inp, out, k=i: store.__setitem__(k, out.detach())) for i in BLOCKS]
    out: dict = {k: [] for k in (*BLOCKS, "head", "cam", "prob")}
    try:
        with GradCAM(model, "head", m.arch) as cam:
            for s in range(0, len(images), batch):
                x = images_to_input(images[s:s + batch], m)
                p, c = cam(x)
                out["head"].append(cam._acts.detach().half())
                for k in BLOCKS:
                    out[k].append(store[k].half())
                out["cam"].append(c)
                out["prob"].append(p)
    finally:
        for h in hooks:
            h.remove()
    return {k: torch.cat(v) for k, v in out.items()}


class RefineHead(nn.Module):
    def __init__(self, channels, res: int) -> None:
        super().__init__()
        self.res = res
        self.reduce = nn.ModuleList(nn.Conv2d(c, 32, 1) for c in channels)
        self.body = nn.Sequential(nn.Conv2d(32 * len(channels), 64, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 1, 1))

    def forward(self, feats):
        z = [F.interpolate(F.relu(r(f.float())), size=(self.res, self.res), mode="bilinear",
                           align_corners=False) for r, f in zip(self.reduce, feats)]
        return self.body(torch.cat(z, 1))[:, 0]


def pseudo_masks(cam: torch.Tensor, res: int, input_size: int, fg_t: float, bg_q: float):
    from rtseg.model.postprocess import largest_component
    from rtseg.model.preprocess import fov_mask

    c = F.adaptive_avg_pool2d(cam[:, None], res)[:, 0]
    fov = F.adaptive_avg_pool2d(fov_mask(input_size)[None, None], res)[0, 0] > 0.99
    fg = torch.stack([torch.from_numpy(largest_component((ci >= fg_t).numpy())) for ci in c]) & fov
    q = torch.stack([torch.quantile(ci[fov], bg_q) for ci in c]).view(-1, 1, 1)
    bg = (c <= q) & fov & ~fg
    return fg, bg


def score(maps, truths, t: float) -> tuple[float, float]:
    from rtseg.model.cam import resize_to
    from rtseg.evaluate.metrics import image_scores
    from rtseg.model.postprocess import largest_component

    d, j = [], []
    for mp, gt in zip(maps, truths):
        s = image_scores(largest_component(resize_to(mp, gt.shape) > t), gt)
        d.append(s["dice"])
        j.append(s["jaccard"])
    return float(np.mean(d)), float(np.mean(j))


def run(args) -> dict:
    from rtseg.imageio import pair_images_masks, read_image, read_mask
    from rtseg.model.bundle import resolve_bundle

    torch.manual_seed(args.seed)
    bundle = resolve_bundle(args.model)
    bundle.model.float().eval()
    size = bundle.manifest.input_size
    res = size // 8
    labels = Path(args.labels)
    if not labels.is_file():
        raise UserError(f"labels CSV {labels} not found")
    with open(labels, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("label") == "polyp"]
    if not rows:
        raise UserError(f"{labels} lists no polyp image")
    train = extract(bundle, [read_image(labels.parent / r["path"]) for r in rows])
    keep = train["prob"] > 0.5
    if not bool(keep.any()):
        raise UserError(f"the model calls none of the {len(rows)} polyp images of {labels} polyp: "
                        "no CAM to learn from")
    train = {k: v[keep] for k, v in train.items()}
    fg, bg = pseudo_masks(train["cam"], res, size, args.fg, args.bg)
    keys = (*BLOCKS, "head")
    head = RefineHead([train[k].shape[1] for k in keys], res)
    opt = torch.optim.Adam(head.parameters(), 1e-3)
    n = len(fg)
    for ep in range(args.epochs):
        perm, total = torch.randperm(n), 0.0
        for s in range(0, n, 32):
            idx = perm[s:s + 32]
            flip = bool(torch.rand(()) < 0.5)
            feats = [train[k][idx] for k in keys]
            f, b = fg[idx], bg[idx]
            if flip:
                feats, f, b = [x.flip(-1) for x in feats], f.flip(-1), b.flip(-1)
            logit = head(feats)
            pos = F.binary_cross_entropy_with_logits(logit[f], torch.ones_like(logit[f]))
            neg = F.binary_cross_entropy_with_logits(logit[b], torch.zeros_like(logit[b]))
            loss = 0.5 * (pos + neg) if f.any() else neg
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss)
        print(f"epoch {ep + 1}/{args.epochs} loss {total:.3f}", flush=True)
    pairs, _ = pair_images_masks(args.images, args.masks)
    val = extract(bundle, [read_image(p.image) for p in pairs])
    truths = [read_mask(p.mask) for p in pairs]
    head.eval()
    with torch.no_grad():
        refined = torch.sigmoid(head([val[k] for k in keys])).numpy()
    cams = val["cam"].numpy()
    policy = bundle.manifest.threshold
    cam_t = float(policy.lo) if policy.kind == "above" else 0.5
    result = {"train_images": n, "val_images": len(pairs), "fg": args.fg, "bg": args.bg,
              "epochs": args.epochs, "cam": {"threshold": cam_t, "dice_jaccard": score(cams, truths, cam_t)},
              "refined": {str(t): score(refined, truths, t) for t in THRESHOLDS}}
    best = max(result["refined"].items(), key=lambda kv: kv[1][0])
    result["refined_best"] = {"threshold": float(best[0]), "dice": best[1][0], "jaccard": best[1][1]}
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--labels", required=True, help="training labels CSV (rtseg train's input)")
    ap.add_argument("--images", required=True, help="validation images")
    ap.add_argument("--masks", required=True, help="validation masks (scoring only)")
    ap.add_argument("--model", default=None, help="bundle (default: the shipped model)")
    ap.add_argument("--fg", type=float, default=0.75, help="CAM threshold of the pseudo foreground")
    ap.add_argument("--bg", type=float, default=0.4, help="lowest CAM fraction taken as background")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    try:
        r = run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    c = r["cam"]["dice_jaccard"]
    print(f"CAM (above {r['cam']['threshold']:g}, largest): Dice {c[0]:.3f}  Jaccard {c[1]:.3f}")
    for t, (d, j) in r["refined"].items():
        print(f"self-trained head > {t}: Dice {d:.3f}  Jaccard {j:.3f}")
    if args.json:
        from rtseg.atomic import write_json

        write_json(args.json, r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
