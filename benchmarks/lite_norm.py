"""Which input normalisation do the installed EfficientNet-Lite1 ImageNet weights expect?

The stem BatchNorm's running statistics record what the stem convolution saw in training.
Feeding real frames with a candidate normalisation and comparing the stem output's per-channel
variance with the BN's running variance tells which normalisation the weights were trained
with (a wrong scale shows as a large ratio). Colonoscopy frames are smoother than ImageNet
photographs, so the right normalisation gives a ratio somewhat below 1.

    python benchmarks/lite_norm.py ../shared/data/kvasir-seg/images --n 64 --json norm.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", type=Path)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    from rich.console import Console
    from rich.table import Table

    from rtseg.model.active_area import prepare
    from rtseg.train.data import resize_like_preprocess
    from rtseg.imageio import list_images, read_image
    from rtseg.model.arch import IMAGENET_MEAN, IMAGENET_STD, LITE_MEAN, LITE_STD
    from rtseg.model.bundle import build_model

    paths = list_images(a.images, "images folder")[: a.n]
    x = torch.from_numpy(np.stack([resize_like_preprocess(prepare(read_image(p))[0], 224) for p in paths]))
    x = x.permute(0, 3, 1, 2).float() / 255.0
    model = build_model("efficientnet-lite1", pretrained=True).eval()
    rv = model._bn0.running_var
    rows = {}
    for name, mean, std in (("TF-Lite (127 / 128)", LITE_MEAN, LITE_STD),
                            ("torchvision ImageNet", IMAGENET_MEAN, IMAGENET_STD)):
        xx = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        with torch.no_grad():
            y = model._conv_stem(xx)
        var = y.var(dim=(0, 2, 3))
        ok = rv > 1e-3
        ratio = (var[ok] / rv[ok])
        rows[name] = {"median_var_ratio": round(float(ratio.median()), 3),
                      "channels_within_2x": round(float(((ratio > 0.5) & (ratio < 2)).float().mean()), 3)}
    t = Table(title=f"stem output variance / BN running variance, {len(paths)} frames of {a.images}")
    t.add_column("normalisation")
    t.add_column("median ratio")
    t.add_column("channels within 2x")
    for name, r in rows.items():
        t.add_row(name, f"{r['median_var_ratio']:.3f}", f"{r['channels_within_2x']:.3f}")
    Console().print(t)
    if a.json:
        from rtseg.atomic import write_json

        write_json(a.json, {"images": str(a.images), "n": len(paths), "rows": rows})


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import run_cli

    run_cli(main)
