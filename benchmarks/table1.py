"""Reproduce the paper's Table 1: the five runs (presets) scored with the Medico 2021 rules.

    python benchmarks/table1.py ../shared/data [--presets run1,run3] [--folds 5]
                                [--device auto] [--json table1.json] [--work runs/table1]

Each preset runs end to end (:func:`rtseg.recipes.presets.run_preset`: seeds -> label propagation ->
EfficientNet-b1 training -> Grad-CAM masks -> Medico 2021 scores on held-out polyp images with
masks). Without ``--folds`` it uses one hold-out split (``--test-fraction``); with ``--folds K``
(K >= 2) it cross-validates: every fold is the test set once, and a CVC-ClinicDB sequence never
spans two folds (``sequences.csv``). The table shows our mean (and standard deviation over
folds) beside the paper's numbers.

The paper's numbers are on the Medico 2021 test set, which is not part of DATA_DIR; only the
ranges over its five runs were available to us (Dice 0.18-0.22, Jaccard 0.10-0.14, recall
0.37-0.63, precision 0.13-0.16), not the per-run values, so every run is shown against the
same ranges. Compare trends, not digits. Run outputs (bundles, labels, figures) go to
``--work``; nothing from DATA_DIR is copied there.

A full run trains 25 epochs per preset and fold: use a GPU (``--device cuda``), or
``--epochs/--size`` for a quick CPU look.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console

from rtseg.atomic import write_json
from rtseg.errors import UserError
from rtseg.evaluate.metrics import METRIC_KEYS

SUMMARY_KEYS = METRIC_KEYS + ("classification_accuracy", "non_polyp_specificity",
                              "heldout_classification_accuracy")


def _summary(folds: list[dict]) -> tuple[dict, dict]:
    mean, std = {}, {}
    for k in SUMMARY_KEYS:
        vals = [f[k] for f in folds if f.get(k) is not None]
        if vals:
            mean[k], std[k] = float(np.mean(vals)), float(np.std(vals))
    mean["n_images"] = int(sum(f["n_images"] for f in folds))
    return mean, std


def run_table(args) -> dict:
    from rtseg.model.bundle import resolve_device
    from rtseg.recipes.presets import (PAPER_TABLE1_NOTE, PAPER_TABLE1_RANGES, RunConfig, fold_split,
                               get_preset, holdout_split, open_data, run_preset)

    presets = [get_preset(p) for p in args.presets.split(",") if p.strip()]
    if not presets:
        raise UserError("--presets names no preset")
    if args.folds == 1 or args.folds < 0:
        raise UserError("--folds must be 0 (one hold-out split) or at least 2")
    device = resolve_device(args.device)
    df = open_data(args.data)
    splits = ([fold_split(df, args.folds, k, args.seeds, args.seed) for k in range(args.folds)]
              if args.folds >= 2 else
              [holdout_split(df, args.test_fraction, args.seeds, args.seed)])
    result = {
        "data": str(args.data), "device": device, "folds": args.folds,
        "settings": {"epochs": args.epochs, "size": args.size, "batch": args.batch,
                     "seeds": args.seeds, "val": args.val, "seed": args.seed,
                     "clusters": args.clusters, "target": args.target,
                     "test_fraction": args.test_fraction if args.folds < 2 else None,
                     "init": str(args.init) if args.init else None},
        "paper": {"ranges": {k: list(v) for k, v in PAPER_TABLE1_RANGES.items()},
                  "note": PAPER_TABLE1_NOTE},
        "runs": {},
    }
    for p in presets:
        folds = []
        t0 = time.perf_counter()
        for k, split in enumerate(splits):
            out = args.work / p.name / (f"fold{k}" if len(splits) > 1 else "holdout")
            cfg = RunConfig(p, args.data, out, device=device, epochs=args.epochs,
                            batch=args.batch, size=args.size, n_seeds=args.seeds,
                            clusters=args.clusters, target=args.target,
                            test_fraction=args.test_fraction, val=args.val, seed=args.seed,
                            init=args.init, figure_rows=4)
            m = run_preset(cfg, split)
            m.pop("per_image", None)
            m["out"] = str(out)
            folds.append(m)
        mean, std = _summary(folds)
        result["runs"][p.name] = {"preset": p.to_dict(), "mean": mean, "std": std,
                                  "folds": folds, "seconds": round(time.perf_counter() - t0, 1)}
        if args.json is not None:  # written after every preset: a crash keeps what was done
            write_json(args.json, result)
    return result


def print_table(result: dict, console: Console) -> None:
    from rich import box
    from rich.table import Table

    from rtseg.recipes.presets import PAPER_TABLE1_NOTE

    cols = ("jaccard", "dice", "f1", "recall", "precision", "accuracy")
    t = Table(title=f"Table 1: Medico 2021 scores (per-image mean; "
                    f"{'%d-fold CV' % result['folds'] if result['folds'] >= 2 else 'hold-out'})",
              box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    t.add_column("run", no_wrap=True)
    for h in ("Jaccard", "Dice", "F1", "Recall", "Prec.", "Acc.", "n"):
        t.add_column(h, justify="right", no_wrap=True)
    paper = result["paper"]["ranges"]

    def rng(k):
        if k == "f1":
            k = "dice"
        return f"{paper[k][0]:.2f}-{paper[k][1]:.2f}".replace("0.", ".") if k in paper else "-"

    for name, r in result["runs"].items():
        mean, std = r["mean"], r["std"]
        t.add_row(name, *("-" if mean.get(k) is None else f"{mean[k]:.3f}" for k in cols),
                  str(mean["n_images"]))
        if result["folds"] >= 2:
            t.add_row("  ± sd", *("" if std.get(k) is None else f"{std[k]:.3f}" for k in cols),
                      "", style="dim")
        t.add_row("  paper", *(rng(k) for k in cols), "", style="dim")
    console.print(t)
    console.print(f"[dim]{PAPER_TABLE1_NOTE}[/dim]")
    for name, r in result["runs"].items():
        m = r["mean"]
        f = (lambda v: "-" if v is None else f"{v:.3f}")
        console.print(f"{name}: {r['preset']['description']}; polyp recall of the classifier "
                      f"{f(m.get('classification_accuracy'))}, non-polyp specificity "
                      f"{f(m.get('non_polyp_specificity'))}; {r['seconds']:.0f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="Example: python benchmarks/table1.py ../shared/data "
                                        "--folds 5 --device cuda --json table1.json")
    ap.add_argument("data", type=Path, help="data folder, e.g. ../shared/data")
    ap.add_argument("--presets", default="run1,run2,run3,run4,run5",
                    help="comma-separated presets (default: all five)")
    ap.add_argument("--folds", type=int, default=0,
                    help="K-fold cross-validation by CVC sequence (0: one hold-out split)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", type=Path, default=None, help="write the results here (atomically)")
    ap.add_argument("--work", type=Path, default=Path("runs/table1"),
                    help="folder for the runs' outputs (bundles, labels, figures)")
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seeds", type=int, default=100, help="seed images per class")
    ap.add_argument("--clusters", type=int, default=None,
                    help="override every preset's k-means clusters (small data)")
    ap.add_argument("--target", type=int, default=None,
                    help="override every preset's labeled target (small data)")
    ap.add_argument("--val", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test-fraction", type=float, default=0.2)
    ap.add_argument("--init", type=Path, default=None, help="ImageNet EfficientNet-b1 weights")
    args = ap.parse_args(argv)
    console = Console()
    try:
        result = run_table(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_table(result, console)
    if args.json is not None:
        write_json(args.json, result)
        console.print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
