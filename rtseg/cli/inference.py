"""``rtseg predict``, ``rtseg eval`` and ``rtseg run``: masks, Medico 2021 scores, the paper's runs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from rtseg.cli.app import SHIPPED_MODEL, app

LAYER_HELP = "CAM layer: block index (0-20 for Lite1, 0-22 for b1) or 'head'. Default: the manifest's."
THRESHOLD_HELP = ("Threshold policy: 'band LO HI', 'above T' or 'otsu'. "
                  "Default: the manifest's.")
DEVICE_HELP = "auto (CUDA if available), cpu or cuda."

# options several commands share (one definition each)
OUT_OPTION = typer.Option(..., "--out", "-o", help="Output folder.", show_default=False)
DEVICE_OPTION = typer.Option("auto", "--device", help=DEVICE_HELP)
PREDICT_HELP = """Write a polyp mask for every image of a folder (the model's map, thresholded).

For each image (recursive) --out gets a mask PNG (0/255, the image's own size, same relative
path and stem, extension .png) and, with --heatmaps, a JET heat-map overlay in
--out/heatmaps/. --out/predictions.csv lists path,prob (the polyp probability). The CAM layer
and threshold come from the model's manifest unless --layer / --threshold override them.
"""

EVAL_HELP = """Score a model's masks against truth masks with the Medico 2021 rules.

Images are matched with --masks by relative path and stem; images without a mask are listed
(first few), counted and left out. Metrics per image: accuracy, Jaccard, Dice, F1, recall,
precision; --reduction per-image (default: the Medico 2021 scorer's mean over images) or
micro (pixels pooled over the set). Empty masks: a ratio whose denominator is 0 counts as 0,
as in the Medico 2021 scorer (an empty prediction of an empty truth scores 0 except accuracy).
A truth mask must have its image's size (one of another size or turned by 90 degrees is
refused with one error line naming it: it would be scored against the wrong pixels). Also
prints the polyp
classification accuracy (prob > 0.5 against 'the mask is not empty'), and beside the model
two constant masks scored on the same images: a centred ellipse (radii r*W, r*H; r as chosen
by 'rtseg tune --write', else 0.25) and the all-foreground mask, with a warning when the
model does not beat them. --json writes the scores (keys accuracy, jaccard, dice, f1, recall,
precision, n_images first, then details, per-image rows, 'baselines' and 'beats_baselines');
--figure writes a grid like the paper's Figure 2.
"""


def _load(model: Optional[Path], device: str):
    from rtseg.model.bundle import resolve_bundle, resolve_device

    dev = resolve_device(device)
    return resolve_bundle(model, dev), dev


def _progress(console):
    from rtseg.ui import progress_bar

    # not on a terminal (a log file, a pipe) the bar would only leave a blank line behind
    return progress_bar(console=console, transient=True, disable=not console.is_terminal)


def _check_file_out(path: Optional[Path], what: str, *inputs: Optional[Path]) -> None:
    """An output file: not a folder, its folder writable, none of ``inputs`` (images, masks,
    then the model: nor an image inside an input folder, a truth mask, nor a model file)."""
    from rtseg.atomic import ensure_parent, refuse_inputs
    from rtseg.errors import UserError
    from rtseg.imageio import IMAGE_EXTENSIONS

    if path is None:
        return
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder, not a file")
    from rtseg.model.bundle import BUNDLE_FILES

    refuse_inputs(path, what, *inputs[:-1], folder_kinds=IMAGE_EXTENSIONS)
    refuse_inputs(path, what, inputs[-1], folder_kinds=BUNDLE_FILES)
    ensure_parent(path)


def scores_table(rows: list[tuple[str, dict]], title: str):
    """A rich table like the paper's Table 1: one row per (name, metrics dict)."""
    from rich import box
    from rich.table import Table

    t = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    t.add_column("run", no_wrap=True, min_width=5)
    for h in ("Jaccard", "Dice", "F1", "Recall", "Prec.", "Acc.", "Cls.acc", "n"):
        t.add_column(h, justify="right", no_wrap=True)

    def f(v):
        return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    for name, m in rows:
        t.add_row(name, *(f(m.get(k)) for k in ("jaccard", "dice", "f1", "recall", "precision",
                                                "accuracy", "classification_accuracy",
                                                "n_images")))
    return t


@app.command(help=PREDICT_HELP,
             epilog="Example: rtseg predict --model runs/run3/model --images "
                    "../shared/data/kvasir-seg/images --out preds --heatmaps")
def predict(
    images: Path = typer.Option(..., "--images", "-i", help="Folder of images (recursive).",
                                show_default=False),
    out: Path = OUT_OPTION,
    model: Optional[Path] = typer.Option(None, "--model", "-m",
                                         help=f"Model bundle folder. Default: {SHIPPED_MODEL}.",
                                         show_default=False),
    layer: Optional[str] = typer.Option(None, "--layer", help=LAYER_HELP, show_default=False),
    threshold: Optional[str] = typer.Option(None, "--threshold", help=THRESHOLD_HELP,
                                            show_default=False),
    heatmaps: bool = typer.Option(False, "--heatmaps", help="Also write heat-map overlays."),
    batch: int = typer.Option(16, "--batch", help="Images per forward pass.", min=1),
    device: str = DEVICE_OPTION,
) -> None:
    import sys
    import time

    from rich.console import Console

    from rtseg.imageio import list_images
    from rtseg.evaluate.predict import check_out_dir, predict_folder, resolve_settings
    from rtseg.shutdown import loop_shutdown

    console = Console(stderr=True)
    t0 = time.perf_counter()
    check_out_dir(out)  # a bad --out fails before the model is loaded
    n = len(list_images(images, "images folder"))
    # SIGINT/SIGTERM/SIGHUP: while loading, stop at once (nothing written yet); then finish
    # the current mask and write predictions.csv for the masks done
    with loop_shutdown() as stop:
        with stop.abort_on_signal():
            bundle, dev = _load(model, device)
            resolve_settings(bundle, layer, threshold)  # bad options fail before reading images
        with _progress(console) as prog:
            task = prog.add_task("predict", total=n)
            s = predict_folder(bundle, images, out, layer=layer, threshold=threshold,
                               heatmaps=heatmaps, batch_size=batch,
                               progress=lambda k: prog.advance(task, k),
                               stop=lambda: stop.requested)
    Console().print(
        f"wrote {s.n_images} mask(s) to {s.out} ({s.n_polyp} with polyp prob > 0.5; "
        f"layer {s.layer}, threshold {s.threshold}, {dev})"
        + (f", heat maps in {s.heatmaps}" if s.heatmaps else "")
        + f"; probabilities in {s.csv} [{time.perf_counter() - t0:.1f} s]")
    if s.interrupted:
        print(f"error: interrupted by {stop.name} after {s.n_images} of {s.n_total} images: "
              f"{s.out} holds their {s.n_images} mask(s)"
              + (" and heat maps" if s.heatmaps else "")
              + f" and {s.csv.name} with {s.n_csv_rows} row(s)"
              + (" (an earlier run's rows kept)" if s.n_csv_rows > s.n_images else "")
              + "; the other images were not done",
              file=sys.stderr)
        raise typer.Exit(stop.exit_code)


@app.command(name="eval", help=EVAL_HELP,
             epilog="Example: rtseg eval --model runs/run3/model --images "
                    "../shared/data/kvasir-seg/images --masks ../shared/data/kvasir-seg/masks "
                    "--json scores.json --figure figure2.png")
def eval_cmd(
    images: Path = typer.Option(..., "--images", "-i", help="Folder of images (recursive).",
                                show_default=False),
    masks: Path = typer.Option(..., "--masks", help="Folder of truth masks (same stems).",
                               show_default=False),
    model: Optional[Path] = typer.Option(None, "--model", "-m",
                                         help=f"Model bundle folder. Default: {SHIPPED_MODEL}.",
                                         show_default=False),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the scores as JSON.",
                                            show_default=False),
    figure: Optional[Path] = typer.Option(None, "--figure",
                                          help="Write a Figure-2 style grid (PNG).",
                                          show_default=False),
    figure_rows: int = typer.Option(4, "--figure-rows", help="Examples in the figure.", min=1),
    layer: Optional[str] = typer.Option(None, "--layer", help=LAYER_HELP, show_default=False),
    threshold: Optional[str] = typer.Option(None, "--threshold", help=THRESHOLD_HELP,
                                            show_default=False),
    reduction: str = typer.Option("per-image", "--reduction",
                                  help="per-image (Medico 2021 mean over images) or micro."),
    batch: int = typer.Option(16, "--batch", help="Images per forward pass.", min=1),
    device: str = DEVICE_OPTION,
) -> None:
    import warnings

    from rich.console import Console

    from rtseg.atomic import write_json
    from rtseg.evaluate.scoring import missing_message, run_eval
    from rtseg.evaluate.figure import write_figure
    from rtseg.imageio import pair_images_masks
    from rtseg.evaluate.metrics import check_reduction
    from rtseg.evaluate.predict import resolve_settings

    console = Console(stderr=True)
    reduction = check_reduction(reduction)
    _check_file_out(json_out, "--json", images, masks, model)
    _check_file_out(figure, "--figure", images, masks, model)
    if figure is not None:
        import cv2

        from rtseg.errors import UserError

        if not cv2.haveImageWriter(str(figure)):
            raise UserError(f"--figure {figure}: use a .png file name")
    bundle, dev = _load(model, device)
    resolve_settings(bundle, layer, threshold)
    pairs, missing = pair_images_masks(images, masks)
    if missing:
        warnings.warn(missing_message(missing, masks))
    with _progress(console) as prog:
        task = prog.add_task("eval", total=len(pairs))
        res = run_eval(bundle, pairs, layer=layer, threshold=threshold, reduction=reduction,
                       batch_size=batch, figure_rows=figure_rows if figure else 0,
                       missing=missing, progress=lambda k: prog.advance(task, k))
    m = res.metrics
    out = Console()
    rows = [(bundle.name, m)]
    if "baselines" in m:  # short labels: the table fits 80 columns
        from rtseg.evaluate.baselines import not_beaten_message

        ell = m["baselines"]["ellipse"]
        rows += [(f"ellipse r={ell['radius']:g}", ell),
                 ("all foreground", m["baselines"]["all_foreground"])]
    out.print(scores_table(rows,
                           f"Medico 2021 scores ({reduction}, {m['n_images']} images, layer "
                           f"{m['layer']}, {m['threshold']})"))
    if "baselines" in m:
        src = "from the manifest" if ell["radius_source"] == "manifest" else "default: none tuned"
        out.print(f"constant-mask baselines: ellipse radii r*W, r*H, r={ell['radius']:g} ({src})")
        msg = not_beaten_message(m["dice"], m["baselines"])
        if msg:
            warnings.warn(msg)
    if json_out is not None:
        write_json(json_out, m)
        out.print(f"scores written to {json_out}")
    if figure is not None:
        write_figure(figure, res.rows)
        out.print(f"figure written to {figure}")


RUN_HELP = """Run one of the paper's five configurations end to end on a data folder.

--data is laid out like ../shared/data (kvasir-seg/images+masks, cvc-clinicdb/images+masks+
sequences.csv, non-polyp/). Steps: split train/test (a CVC sequence never spans both), pick
--seeds polyp + --seeds non-polyp seed images, propagate labels over the rest of the train
images (k-means on global features), train EfficientNet-b1, then score the held-out polyp
images with the Medico 2021 rules. --out gets labels.csv, propagation.json, model/ (the
bundle), metrics.json, figure.png and run.json.

Presets: run1 = 2x2 tiles labeled from masks, layer 14, band 0.4 0.7; run2 = layer 13, band
0.4 0.7; run3 = layer 14, band 0.4 0.7; run4 = layer 20, above 0.28; run5 = layer 22, above
0.28. Clusters per run (200/200/50/250/200) and Run 1's tile target are assumptions (see
rtseg.recipes.presets).
"""


RUN_EPILOG = "Example: rtseg run --preset run3 --data ../shared/data --out runs/run3 --device cuda"


@app.command(help=RUN_HELP, epilog=RUN_EPILOG)
def run(
    preset: str = typer.Option(..., "--preset", "-p", help="run1, run2, run3, run4 or run5.",
                               show_default=False),
    data: Path = typer.Option(..., "--data", help="Data folder (layout of ../shared/data).",
                              show_default=False),
    out: Path = OUT_OPTION,
    device: str = DEVICE_OPTION,
    epochs: int = typer.Option(25, "--epochs", help="Training epochs.", min=1),
    batch: int = typer.Option(16, "--batch", help="Batch size (training and inference).", min=1),
    size: int = typer.Option(224, "--size", help="Network input size."),
    seeds: int = typer.Option(100, "--seeds", help="Seed images per class.", min=1),
    clusters: Optional[int] = typer.Option(None, "--clusters",
                                           help="k of the first k-means fit (default: the preset's).",
                                           show_default=False, min=1),
    target: Optional[int] = typer.Option(None, "--target",
                                         help="Labeled images (tiles for run1) to reach "
                                              "(default: the preset's).",
                                         show_default=False, min=1),
    test_fraction: float = typer.Option(0.2, "--test-fraction", help="Held-out share of each source."),
    val: int = typer.Option(60, "--val", help="Labeled images held out for validation in training."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split, the seed choice and training."),
    init: Optional[Path] = typer.Option(None, "--init",
                                        help="ImageNet EfficientNet weights to start training from.",
                                        show_default=False),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Use the feature cache."),
) -> None:
    from rich.console import Console

    from rtseg.model.bundle import resolve_device
    from rtseg.evaluate.predict import prepare_out_dir
    from rtseg.recipes.presets import (PAPER_TABLE1_NOTE, RunConfig, get_preset, holdout_split,
                               open_data, run_preset)

    from rtseg.model.validate import check_input_size

    check_input_size(size)  # before the split and the feature extraction (minutes)
    from rtseg.atomic import removed_if_failed

    p = get_preset(preset)
    dev = resolve_device(device)
    with removed_if_failed(out):  # a run that fails early leaves no empty --out folder
        prepare_out_dir(out)
        split = holdout_split(open_data(data), test_fraction, seeds, seed)
        cfg = RunConfig(p, data, out, device=dev, epochs=epochs, batch=batch, size=size,
                        n_seeds=seeds, clusters=clusters, target=target,
                        test_fraction=test_fraction, val=val, seed=seed, init=init, cache=cache)
        drop_stale_results(out)
        m = run_preset(cfg, split)
    console = Console()
    console.print(scores_table([(p.name, m), ("paper", paper_row())],
                               f"{p.name}: {p.description} ({m['n_images']} held-out images)"))
    console.print(f"{PAPER_TABLE1_NOTE}; non-polyp specificity "
                  f"{m['non_polyp_specificity'] if m['non_polyp_specificity'] is not None else '-'}"
                  f"; outputs in {out}")


RUN_RESULTS = ("metrics.json", "figure.png", "run.json")  # made from labels.csv and model/


def drop_stale_results(out: Path) -> None:
    """A rerun replaces labels.csv and model/ first: the scores of the earlier run go now, so a
    rerun stopped half-way never leaves them beside labels and a model they do not describe."""
    import contextlib

    for name in RUN_RESULTS:
        with contextlib.suppress(FileNotFoundError):
            (out / name).unlink()


def paper_row() -> dict:
    """The paper's Table 1 numbers as printable ranges."""
    from rtseg.recipes.presets import PAPER_TABLE1_RANGES

    def r(v: float) -> str:
        return f"{v:.2f}".lstrip("0")

    row: dict = {k: f"{r(lo)}-{r(hi)}" for k, (lo, hi) in PAPER_TABLE1_RANGES.items()}
    row["f1"] = row["dice"]
    return row
