"""``rtseg train``: the polyp / non-polyp classifier from a labels CSV; ``rtseg build-model``: the
shipped model's recipe (:mod:`rtseg.recipes.distill`) from a data folder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from rtseg.cli.app import app

TRAIN_HELP = """Train the EfficientNet classifier on a labels CSV and write a model bundle.

The labels CSV has columns path,label[,source,round] (as written by [bold]rtseg propagate[/]);
a path may name a 2x2 tile as IMAGE#t0..IMAGE#t3; relative paths resolve against the CSV's
folder. --val images are held out (stratified, seeded) and measured every epoch; the best epoch
(validation accuracy, then loss) is saved as OUT/weights.pt + OUT/manifest.json, and
OUT/checkpoint.pt after every epoch (continue with --resume). The default --arch is the
paper's efficientnet-b1 from scratch; the shipped model (ImageNet EfficientNet-Lite1 +
segmentation head, fine-tuned end to end) is built by [bold]rtseg build-model[/], not by this
command.

[bold]Example:[/] rtseg train --labels runs/labels.csv --out runs/model --epochs 25
"""


@app.command("train", help=TRAIN_HELP)
def train_cmd(
    labels: Path = typer.Option(..., "--labels", help="Labels CSV (path,label[,source,round]).",
                                show_default=False),
    out: Path = typer.Option(..., "--out", help="Bundle folder to write.", show_default=False),
    epochs: int = typer.Option(25, "--epochs", help="Epochs in total (counting resumed ones)."),
    batch: int = typer.Option(16, "--batch", help="Batch size."),
    size: int = typer.Option(224, "--size", help="Network input size (pixels, square)."),
    lr: float = typer.Option(1e-3, "--lr", help="Adam learning rate."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]."),
    seed: int = typer.Option(0, "--seed", help="Seed of initialisation, split, shuffling and "
                             "augmentation."),
    val: int = typer.Option(60, "--val", help="Images held out for validation (0 = none)."),
    augment: bool = typer.Option(True, "--augment/--no-augment",
                                 help="Flips, rotations, zoom and colour jitter on the device."),
    fov: bool = typer.Option(True, "--fov/--no-fov",
                             help="Common field-of-view mask on every input (manifest fov_mask)."),
    init: Optional[Path] = typer.Option(None, "--init", help="Local efficientnet-pytorch "
                                        "ImageNet state_dict to start from (its _fc is dropped).",
                                        show_default=False),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/checkpoint.pt."),
    layer: str = typer.Option("14", "--layer", help="Grad-CAM layer stored in the manifest "
                              "(block index or 'head')."),
    threshold: str = typer.Option("above 0.28", "--threshold", help="Threshold policy stored "
                                  "in the manifest: 'band LO HI', 'above T' or 'otsu'."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Image-decoding threads "
                                          "(default: min(8, CPUs)).", show_default=False),
    arch: str = typer.Option("efficientnet-b1", "--arch", help="Backbone: efficientnet-b0..b3 "
                             "(efficientnet-pytorch, random init: the paper's) or "
                             "efficientnet-lite1 (ImageNet weights installed with rtseg)."),
    pretrained: Optional[bool] = typer.Option(None, "--pretrained/--no-pretrained",
                                              help="Start from the installed ImageNet weights "
                                              "(default: where the architecture has them).",
                                              show_default=False),
    active_area: bool = typer.Option(False, "--active-area/--no-active-area",
                                     help="Crop every image to the endoscope's lit field of "
                                     "view first (recorded in the manifest; the default "
                                     "model's setting)."),
    precise_bn: int = typer.Option(256, "--precise-bn", help="Training images (unaugmented) "
                                   "that re-estimate the BatchNorm statistics after every "
                                   "epoch; 0 = off (the paper's set-up)."),
) -> None:
    from rtseg.model.arch import parse_layer
    from rtseg.evaluate.predict import check_out_dir
    from rtseg.train.config import TrainConfig
    from rtseg.train.loop import train

    check_out_dir(out)  # a bad --out fails now, not after the first epoch
    config = TrainConfig(labels=labels, out=out, epochs=epochs, batch=batch, size=size, lr=lr,
                         device=device, seed=seed, val=val, augment=augment, fov=fov, init=init,
                         resume=resume, layer=parse_layer(layer), threshold=threshold,
                         workers=workers, precise_bn=precise_bn, arch=arch,
                         pretrained=pretrained, active_area=active_area)
    from rtseg.atomic import removed_if_failed

    with removed_if_failed(out):  # a failed first epoch leaves no empty --out folder
        result = train(config, progress=True)
    if result.val_accuracy is not None:
        how = (f"best epoch {result.best_epoch}: val accuracy {result.val_accuracy:.3f}, "
               f"val loss {result.val_loss:.4f}")
    else:
        how = f"last epoch {result.best_epoch}, no validation set"
    typer.echo(f"saved {result.bundle} ({how}; {result.epochs_run} epoch(s) in "
               f"{result.seconds:.1f} s on {result.device})")


BUILD_MODEL_HELP = """Build the shipped model from a data folder and write its bundle.

The recipe (rtseg.recipes.distill): a probe on the frozen ImageNet EfficientNet-Lite1 (a linear
classifier on the image labels of every source, a segmentation head that refines its Grad-CAM,
trained on 100 seed masks, then on its own confident maps) teaches the network, which is then
fine-tuned end to end through augmented views. --data has the data README's layout; the frozen
network's features are cached under --cache and reused by later runs. OUT gets weights.pt +
manifest.json as a whole: an existing OUT is replaced only once the new bundle is complete (its
other files, such as a model card, are kept). Cross-validation and the hold-out of each source:
python -m rtseg.recipes.distill cv|holdout.

[bold]Example:[/] rtseg build-model --data ../shared/data --out runs/model
"""


@app.command("build-model", help=BUILD_MODEL_HELP)
def build_model_cmd(
    data: Path = typer.Option(..., "--data", help="Data folder (the data README's layout).", show_default=False),
    out: Path = typer.Option(..., "--out", help="Bundle folder to write.", show_default=False),
    variant: Optional[str] = typer.Option(None, "--variant", help="Recipe variant (default: the shipped "
                                          "model's).", show_default=False),
    cache: Path = typer.Option(Path("runs/lite_features"), "--cache", help="Folder of the frozen network's "
                               "cached features."),
) -> None:
    from rtseg.recipes.distill.build import build
    from rtseg.recipes.distill.fit import DEFAULT_VARIANT

    typer.echo(f"saved {build(data, out, cache, variant or DEFAULT_VARIANT)}")
