"""Are the cross-validation figures the product's? One fold, scored both ways.

Fits the shipped model's recipe (``rtseg.recipes.distill``, the shipped variant unless ``--variant``) on the training folds of
fold K, scores the held-out Kvasir-SEG / CVC-ClinicDB images with the recipe's own scorer
(cached features), then writes the fit as a bundle and scores the same images with
``rtseg eval``'s code (:func:`rtseg.evaluate.scoring.run_eval`: decode, active area, eager Grad-CAM +
head, threshold, clean-up, paste back). The two Dice figures must agree. Then each held-out
PolypGen polyp-free sequence is played through ``rtseg stream``'s loop with that bundle: the
frames it calls polyp (after the call's moving average, the bundle's ``call_smoothing``) must
be the recipe's live-loop count.

    python benchmarks/lite_fold_check.py ../shared/data --fold 0 --json fold_check.json
"""

from __future__ import annotations

import argparse
from pathlib import Path


def rl_default_variant() -> str:
    from rtseg.recipes.distill.fit import DEFAULT_VARIANT

    return DEFAULT_VARIANT


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--variant", default=rl_default_variant())
    ap.add_argument("--cache", type=Path, default=Path("runs/lite_features"))
    ap.add_argument("--out", type=Path, default=Path("runs/fold_check_bundle"))
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    import torch
    from rich.console import Console
    from rich.table import Table

    from rtseg.recipes.distill.build import bundle_of
    from rtseg.recipes.distill.cv import score
    from rtseg.recipes.distill.data import add_tiles, load_all, open_store, seeds_of
    from rtseg.recipes.distill.fit import fit, variant_named
    from rtseg.recipes.layout import group_folds
    from rtseg.evaluate.scoring import run_eval
    from rtseg.model.bundle import load_bundle, save_bundle

    torch.set_flush_denormal(True)
    v = variant_named(a.variant)
    items = load_all(a.data)
    store = open_store(items, a.cache)
    fold_of = {s: group_folds(v, a.folds) for s, v in items.items()}
    train = {s: [it for j, f in enumerate(fl) if j != a.fold for it in f] for s, fl in fold_of.items()}
    test = {s: fl[a.fold] for s, fl in fold_of.items()}
    add_tiles(store, seeds_of(train))
    f = fit(store, train, v, store.m)
    cached = score(store, f, test)
    save_bundle(bundle_of(f, v, a.variant), a.out)  # fp32: the same weights as the cached fit
    bundle = load_bundle(a.out)
    rows = {}
    for src in ("kvasir", "cvc"):
        pairs = [(it.image, it.mask) for it in test[src]]
        prod = run_eval(bundle, pairs, per_image=False).metrics
        rows[src] = {"recipe_dice": cached[src]["model"]["dice"], "product_dice": round(prod["dice"], 4),
                     "recipe_jaccard": cached[src]["model"]["jaccard"], "product_jaccard": round(prod["jaccard"], 4),
                     "n": len(pairs)}
    stream = stream_check(a.out, test["pg_neg"], cached["pg_neg"]["stream_per_sequence"])
    t = Table(title=f"fold {a.fold} of {a.folds}, held out: the recipe's scorer vs rtseg eval")
    for c in ("source", "n", "Dice (recipe)", "Dice (rtseg eval)", "Jaccard (recipe)", "Jaccard (rtseg eval)"):
        t.add_column(c)
    for src, r in rows.items():
        t.add_row(src, str(r["n"]), f"{r['recipe_dice']:.4f}", f"{r['product_dice']:.4f}",
                  f"{r['recipe_jaccard']:.4f}", f"{r['product_jaccard']:.4f}")
    Console().print(t)
    t = Table(title=f"held-out polyp-free sequences: the recipe's live-loop call vs rtseg stream "
                    f"(call_smoothing {f.call_smoothing})")
    for c in ("sequence", "frames", "called polyp (recipe)", "called polyp (rtseg stream)"):
        t.add_column(c)
    for g, r in stream.items():
        t.add_row(g, str(r["frames"]), str(r["recipe_called_polyp"]), str(r["stream_called_polyp"]))
    Console().print(t)
    if a.json:
        from rtseg.atomic import write_json

        write_json(a.json, {"fold": a.fold, "folds": a.folds, "variant": a.variant, "rows": rows,
                            "call_smoothing": f.call_smoothing, "stream": stream})


def stream_check(bundle: Path, items: list, recipe_rates: dict) -> dict:
    """Each held-out polyp-free sequence played by ``rtseg stream``'s loop (a folder of its frames,
    natural order, the written bundle, eager torch backend): frames called polyp, beside the
    recipe's live-loop count (``score``'s ``stream_per_sequence``)."""
    import os
    import tempfile

    from rtseg.live.loop import StreamConfig, run_stream
    from rtseg.recipes.distill.call_smoothing import clips

    out = {}
    for clip in clips(items):
        g = clip[0].group
        with tempfile.TemporaryDirectory() as d:
            for it in clip:
                os.symlink(Path(it.image).resolve(), Path(d) / Path(it.image).name)
            res = run_stream(StreamConfig(source=d, model=str(bundle), backend="torch", headless=True,
                                          quiet=True, log_every=0))
        out[g] = {"frames": res.stats["frames_processed"],
                  "recipe_called_polyp": round(len(clip) * (1 - recipe_rates[g])),
                  "stream_called_polyp": res.stats["frames_called_polyp"]}
    return out


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import run_cli

    run_cli(main)
