"""``rtseg tune``: choose the CAM layer, threshold and mask clean-up on validation data."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from rtseg.cli.app import app


@app.command(epilog="Example: rtseg tune --model runs/bundle --images val/images --masks val/masks --write")
def tune(
    model: Path = typer.Option(..., "--model", help="Bundle folder to tune."),
    images: Path = typer.Option(..., "--images", help="Validation images (never your test images)."),
    masks: Path = typer.Option(..., "--masks", help="Their masks, matched by file stem."),
    layers: Optional[str] = typer.Option(None, "--layers",
                                         help="Comma-separated layers, e.g. '12,14,20,head' "
                                              "(default: the last 15 blocks and head)."),
    write: bool = typer.Option(False, "--write", help="Write the best choice into the bundle's manifest."),
    top: int = typer.Option(10, "--top", help="Rows to show."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write all rows as JSON."),
) -> None:
    """Choose the CAM layer, threshold and mask clean-up on validation images.

    Scores every (layer, threshold policy, clean-up) combination with the Medico per-image
    metrics at the network's input resolution and picks the best by mean Dice. The same masks
    score two constant baselines, printed beside the best row: a centred ellipse (radius
    r*W, r*H with r of best Dice on these images, 0.10-0.50) and the all-foreground mask; a
    warning says when the best row does not beat them. --json adds them under 'baselines'
    with 'beats_baselines'; --write also stores the ellipse's radius for 'rtseg eval'.
    """
    import warnings

    from rich.console import Console
    from rich.table import Table

    from rtseg.atomic import write_json
    from rtseg.evaluate.baselines import LABELS, not_beaten_message
    from rtseg.imageio import pair_images_masks, warn_skipped
    from rtseg.model.arch import check_layer, parse_layer
    from rtseg.model.bundle import load_bundle, resolve_device, save_bundle
    from rtseg.evaluate.tune import apply_best
    from rtseg.evaluate.tune import tune as run_tune

    from rtseg.atomic import check_out_file, refuse_inputs
    from rtseg.errors import UserError
    from rtseg.imageio import IMAGE_EXTENSIONS
    from rtseg.model.bundle import BUNDLE_FILES

    if top < 1:
        raise UserError(f"--top must be at least 1, got {top}")
    check_out_file(json_out, "--json")  # before the (long) tuning run
    refuse_inputs(json_out, "--json", images, masks, folder_kinds=IMAGE_EXTENSIONS)
    refuse_inputs(json_out, "--json", model, folder_kinds=BUNDLE_FILES)
    dev = resolve_device(device)
    bundle = load_bundle(model, dev)
    pairs, missing = pair_images_masks(images, masks)
    warn_skipped([str(p) for p in missing], "image without mask")
    lay = None
    if layers:
        lay = [check_layer(bundle.manifest.arch, parse_layer(t)) for t in layers.split(",")]
    res = run_tune(bundle, [(p.image, p.mask) for p in pairs], lay, device=dev, progress=True)
    t = Table(title=f"rtseg tune: {model} on {res.n_images} images (best first)")
    for c in ("layer", "threshold", "clean-up", "Dice", "Jaccard", "recall", "precision"):
        t.add_column(c)
    for r in res.rows[:top]:
        t.add_row(str(r.layer), r.threshold, "+".join(r.postprocess) or "-", f"{r.dice:.4f}",
                  f"{r.jaccard:.4f}", f"{r.recall:.4f}", f"{r.precision:.4f}")
    console = Console()
    console.print(t)
    b = res.best
    bt = Table(title="best row vs. constant masks (same images, same scoring)")
    for c in ("mask", "Dice", "Jaccard", "recall", "precision"):
        bt.add_column(c)
    bt.add_row(f"model: layer {b.layer}, {b.threshold}, {'+'.join(b.postprocess) or '-'}",
               f"{b.dice:.4f}", f"{b.jaccard:.4f}", f"{b.recall:.4f}", f"{b.precision:.4f}")
    for name, s in res.baselines.items():
        label = LABELS[name] + (f" r={s['radius']:g}" if "radius" in s else "")
        bt.add_row(label, f"{s['dice']:.4f}", f"{s['jaccard']:.4f}", f"{s['recall']:.4f}",
                   f"{s['precision']:.4f}")
    console.print(bt)
    msg = not_beaten_message(b.dice, res.baselines, "the model's best masks")
    if msg:
        warnings.warn(msg)
    if json_out:
        write_json(json_out, {"n_images": res.n_images, "rows": [r.__dict__ for r in res.rows],
                              "baselines": res.baselines, "beats_baselines": res.beats_baselines})
    if write:
        apply_best(bundle, res, split_note=f"images={images}")
        save_bundle(bundle, model, half=_is_half(model))
        typer.echo(f"wrote layer {b.layer}, threshold '{b.threshold}', clean-up "
                   f"{'+'.join(b.postprocess) or 'none'}, baseline ellipse radius "
                   f"{res.baselines['ellipse']['radius']:g} into {model}/manifest.json")


def _is_half(bundle_dir: Path) -> bool:
    import torch

    state = torch.load(bundle_dir / "weights.pt", map_location="cpu", weights_only=True)
    return any(v.dtype == torch.float16 for v in state.values())
