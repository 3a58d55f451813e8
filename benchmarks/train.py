"""Benchmark ``rtseg train``: training images/s on the device in use.

Runs the real training path (:func:`rtseg.train.loop.train`: decode once into the device cache,
batched augmentation, the training step, validation, background checkpoints, bundle) on
generated colonoscopy-like images (written as JPEGs with a labels CSV) or on a given labels
CSV, then prints a rich table (median / min / max epoch time, images/s, device) and writes
the figures as JSON, atomically.

    python benchmarks/train.py --images 1000 --size 224 --epochs 25 --json bench_train.json
    python benchmarks/train.py --labels runs/labels.csv --epochs 3 --device cuda

"images/s" counts the training images pushed through forward + backward + Adam per second of
training-step time (median epoch); "total" is the wall time of the whole call, image decoding,
validation and the bundle included.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def generate(folder: Path, n: int, size: int, seed: int) -> Path:
    """``n`` synthetic images (half polyp) as JPEGs in ``folder`` plus ``labels.csv``."""
    import csv

    import cv2
    import numpy as np

    from rtseg.synthetic import make_sample

    folder.mkdir(parents=True, exist_ok=True)
    labels = folder / "labels.csv"
    if labels.is_file() and sum(1 for _ in open(labels)) == n + 1:
        return labels  # reuse a generated set of the same size

    def one(i: int) -> tuple[str, str]:
        s = make_sample(np.random.default_rng(seed * 100003 + i), (size, size), polyp=i % 2 == 0)
        name = f"img{i:05d}.jpg"
        cv2.imwrite(str(folder / name), cv2.cvtColor(s.image, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
        return name, s.label

    with ThreadPoolExecutor(8) as pool:
        rows = list(pool.map(one, range(n)))
    with open(labels, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "source", "round"])
        w.writerows([name, label, "synthetic", "0"] for name, label in rows)
    return labels


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labels", type=Path, help="labels CSV to train on (default: generated)")
    ap.add_argument("--images", type=int, default=1000, help="generated images (default 1000)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--val", type=int, default=60)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-augment", action="store_true")
    ap.add_argument("--no-cuda-graph", action="store_true", help="eager steps on CUDA")
    ap.add_argument("--cudnn-benchmark", action="store_true",
                    help="let cuDNN time its algorithms (slow first step)")
    ap.add_argument("--workdir", type=Path, help="keep generated data and the bundle here")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--progress", action="store_true", help="show training progress")
    ap.add_argument("--json", type=Path, help="write the figures here (atomically)")
    args = ap.parse_args(argv)

    import torch
    from rich.console import Console
    from rich.table import Table

    from rtseg.atomic import write_json
    from rtseg.errors import UserError
    from rtseg.model.bundle import resolve_device
    from rtseg.train.config import TrainConfig
    from rtseg.train.loop import train

    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console()
    tmp = None
    try:
        device = resolve_device(args.device)
        work = args.workdir
        if work is None:
            tmp = tempfile.TemporaryDirectory(prefix="rtseg-bench-train-")
            work = Path(tmp.name)
        t0 = time.perf_counter()
        if args.labels is not None:
            labels, source = args.labels, str(args.labels)
        else:
            labels = generate(work / "data", args.images, args.size, args.seed)
            source = f"generated ({args.images} images, {args.size}x{args.size})"
        gen_s = time.perf_counter() - t0
        cfg = TrainConfig(labels=labels, out=work / "bundle", epochs=args.epochs, batch=args.batch,
                          size=args.size, device=device, seed=args.seed, val=args.val,
                          augment=not args.no_augment, cuda_graph=not args.no_cuda_graph,
                          cudnn_benchmark=args.cudnn_benchmark)
        result = train(cfg, progress=args.progress)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if tmp is not None:
            tmp.cleanup()

    t = result.manifest.training
    hist = result.history
    ep = [h["train_seconds"] for h in hist]
    steady = ep[1:] if len(ep) > 1 else ep
    bsz = min(args.batch, t["train_images"])
    per_epoch = -(-t["train_images"] // bsz) * bsz  # images through the step per epoch
    med = statistics.median(steady)
    epoch_total = sum(h["seconds"] for h in hist)
    setup = result.seconds - epoch_total
    figures = {
        "device": t["device"], "torch": torch.__version__, "data": source,
        "train_images": t["train_images"], "val_images": t["val_images"], "size": args.size,
        "batch": args.batch, "epochs": args.epochs, "augment": t["augment"],
        "precision": t["precision"], "cuda_graph": t["cuda_graph"],
        "cpu_threads": torch.get_num_threads(), "cudnn_benchmark": args.cudnn_benchmark,
        "epoch_train_s": {"median": med, "min": min(steady), "max": max(steady),
                          "first": ep[0], "all": ep},
        "images_per_s": per_epoch / med,
        "images_per_s_all_epochs": per_epoch * len(ep) / sum(ep),
        "epoch_with_val_s_median": statistics.median(h["seconds"] for h in hist[1:] or hist),
        "setup_s": setup,  # decode into the cache, model, bundle
        "total_s": result.seconds,
        "projected_25_epochs_s": setup + hist[0]["seconds"] + 24 * statistics.median(
            h["seconds"] for h in hist[1:] or hist),
        "generate_s": gen_s,
        "val_accuracy": result.val_accuracy, "best_epoch": result.best_epoch,
    }
    table = Table(title="rtseg train benchmark")
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        ("device", figures["device"]), ("torch", figures["torch"]), ("data", source),
        ("train / val images", f"{t['train_images']} / {t['val_images']}"),
        ("input size, batch", f"{args.size}, {args.batch}"),
        ("precision, CUDA graph", f"{t['precision']}, {t['cuda_graph']}"),
        ("cuDNN benchmark", str(args.cudnn_benchmark)),
        ("augment", str(t["augment"])),
        ("epochs", str(args.epochs)),
        ("epoch time median / min / max (s)" + (" (after the 1st)" if len(ep) > 1 else ""),
         f"{med:.3f} / {min(steady):.3f} / {max(steady):.3f}"),
        ("first epoch (s)", f"{ep[0]:.3f}"),
        ("training images/s (median epoch)", f"{figures['images_per_s']:.1f}"),
        ("setup: decode + model + bundle (s)", f"{setup:.2f}"),
        ("total (s)", f"{result.seconds:.2f}"),
        ("projected 25 epochs (s)", f"{figures['projected_25_epochs_s']:.1f}"),
        ("best val accuracy (epoch)", "-" if result.val_accuracy is None
         else f"{result.val_accuracy:.3f} ({result.best_epoch})"),
    ]
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)
    if args.json is not None:
        write_json(args.json, figures)
        console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
