"""``rtseg features`` and ``rtseg propagate``: global features and k-means label propagation."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from rtseg.cli.app import app

PROPAGATE_HELP = """Label many images from a few, by k-means on global image features (stage 1).

[bold]Algorithm[/bold] (details: module rtseg.propagate.kmeans). Labeled = seeds plus every image
labeled in an earlier round. Each round fits k-means (k-means++, random_state=0) on all
images, first with k = --clusters. A cluster qualifies if it has unlabeled members, at least
one labeled member, and its majority label holds at least --purity of its labeled members
(and more than half: a tie labels nothing). Qualifying clusters are taken in order of their
number of labeled members; all their unlabeled members get the majority label, until --target
images (seeds included) are labeled; a cluster that would overshoot gives its label to the
members nearest its centre only. The next round refits with k // 2 (at least 2), so images
labeled in this round act as seeds in coarser clusters. It stops at --target, when every
image is labeled, or after the fit at k = 2 (nothing more can be labeled; it says so): at most
8 k-means fits for k = 200.

[bold]Input[/bold]: --labeled has sub-folders polyp/ and non_polyp/; --unlabeled is searched
recursively (seed images found there are not counted twice).
[bold]Output[/bold]: CSV with columns path,label,source,round (source seed or propagated;
seeds have round 0), written atomically; unlabeled images are left out.
[bold]--tiles[/bold] (the paper's Run 1): each image is split into 2x2 tiles named
path#t0..t3 (t0 top-left, t1 top-right, t2 bottom-left, t3 bottom-right). With --masks, a
seed tile is polyp if its fraction of mask pixels (mask matched by file stem) is above
--tile-min-fraction (default 0: any pixel), whatever the image's folder; without a mask a
seed tile takes its image's label.
Features are cached (RTSEG_CACHE_DIR or ~/.cache/rtseg), so a second run is fast.
"""

PROPAGATE_EPILOG = (
    "Example: rtseg propagate --labeled seeds/ --unlabeled ../shared/data --clusters 200 "
    "--target 1000 --out labels.csv --truth truth.csv --json report.json"
)


def _check_out(path: Optional[Path], what: str) -> None:
    from rtseg.atomic import ensure_parent
    from rtseg.errors import UserError

    if path is None:
        return
    if path.exists() and path.is_dir():
        raise UserError(f"{what} {path} is a folder, not a file")
    ensure_parent(path)


def _refuse_inputs(path: Optional[Path], what: str, *inputs: Optional[Path]) -> None:
    """An output that is an input (a CSV, an image, an image inside an input folder): refused."""
    from rtseg.atomic import refuse_inputs
    from rtseg.imageio import IMAGE_EXTENSIONS

    refuse_inputs(path, what, *inputs, folder_kinds=IMAGE_EXTENSIONS)


def _ray_mapper(workers: Optional[int], address: Optional[str]):
    """--workers / --address: a Ray back end for the features (None: this process's threads)."""
    if workers is None and address is None:
        return None
    from rtseg.batch.features import RayMapper

    return RayMapper(workers, address)


WORKERS_HELP = ("Compute features on N Ray workers (a local Ray; same results and cache). "
                "Default: threads in this process.")
ADDRESS_HELP = "Compute features on this Ray cluster (auto, HOST:PORT or ray://HOST:PORT)."


def _expand_inputs(inputs: List[Path]) -> list[Path]:
    from rtseg.errors import UserError
    from rtseg.imageio import IMAGE_EXTENSIONS, list_images

    paths: list[Path] = []
    for p in inputs:
        if p.is_dir():
            paths += list_images(p)
        elif p.is_file():
            if p.suffix.lower() not in IMAGE_EXTENSIONS:
                raise UserError(f"not an image file ({', '.join(IMAGE_EXTENSIONS)}): {p}")
            paths.append(p)
        else:
            raise UserError(f"image file or folder not found: {p}")
    seen, out = set(), []
    for p in paths:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


@app.command(epilog="Example: rtseg features ../shared/data/kvasir-seg/images --out features.csv")
def features(
    images: List[Path] = typer.Argument(..., help="Image files or folders (searched recursively).",
                                        show_default=False),
    out: Path = typer.Option(Path("features.csv"), "--out", "-o", help="Output CSV."),
    cache: bool = typer.Option(True, "--cache/--no-cache",
                               help="Use the feature cache (RTSEG_CACHE_DIR or ~/.cache/rtseg)."),
    workers: Optional[int] = typer.Option(None, "--workers", "-w", help=WORKERS_HELP,
                                          show_default=False),
    address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP, show_default=False),
) -> None:
    """Compute the 226 global features (LIRE edge histogram 80, Tamura 18, luminance layout 64,
    colour histogram 64) of every image: one CSV row per image, path + one named column each."""
    import time

    from rich.console import Console

    from rtseg.errors import UserError
    from rtseg.features import FEATURE_NAMES
    from rtseg.propagate.files import image_features, write_features_csv

    _check_out(out, "--out")
    mapper = _ray_mapper(workers, address)
    paths = _expand_inputs(images)
    _refuse_inputs(out, "--out", *images)

    t0 = time.perf_counter()
    feats, ok, skipped = image_features(paths, use_cache=cache, progress=True, mapper=mapper)
    if not ok:
        raise UserError("no readable image among the inputs")
    write_features_csv(out, [str(p) for p in ok], feats, FEATURE_NAMES)
    Console().print(f"wrote {len(ok)} x {len(FEATURE_NAMES)} features to {out} "
                    f"in {time.perf_counter() - t0:.1f} s")


@app.command(help=PROPAGATE_HELP, epilog=PROPAGATE_EPILOG)
def propagate(
    labeled: Path = typer.Option(..., "--labeled", help="Folder with polyp/ and non_polyp/ seed images.",
                                 show_default=False),
    unlabeled: Path = typer.Option(..., "--unlabeled", help="Folder of unlabeled images (recursive).",
                                   show_default=False),
    clusters: int = typer.Option(200, "--clusters", "-k", help="k of the first k-means fit (paper: 50/200/250)."),
    target: int = typer.Option(1000, "--target", help="Stop once this many images (seeds included) are labeled."),
    out: Path = typer.Option(Path("labels.csv"), "--out", "-o", help="Output CSV: path,label,source,round."),
    scale: str = typer.Option("standard", "--scale",
                              help="Feature scaling before k-means: standard (z-score each feature; better on "
                                   "the benchmark's tile task) or none (raw LIRE values)."),
    purity: float = typer.Option(0.5, "--purity",
                                 help="Minimum share of the majority label among a cluster's labeled "
                                      "members (0.5-1; a tie never labels)."),
    tiles: bool = typer.Option(False, "--tiles", help="Propagate labels of 2x2 tiles instead of whole images."),
    masks: Optional[Path] = typer.Option(None, "--masks", help="With --tiles: masks of the seed images (matched by stem).",
                                         show_default=False),
    tile_min_fraction: float = typer.Option(0.0, "--tile-min-fraction",
                                            help="With --masks: a tile is polyp if its mask fraction is above this."),
    truth: Optional[Path] = typer.Option(None, "--truth", help="CSV path,label: score the propagated labels.",
                                         show_default=False),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the summary (and truth report) as JSON.",
                                            show_default=False),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Use the feature cache."),
    workers: Optional[int] = typer.Option(None, "--workers", "-w", help=WORKERS_HELP,
                                          show_default=False),
    address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP, show_default=False),
) -> None:
    import time

    import numpy as np
    from rich.console import Console

    from rtseg.atomic import write_json
    from rtseg.errors import UserError
    from rtseg.imageio import CLASS_NAMES, labeled_folder, list_images, read_mask
    from rtseg.propagate import files as PF, kmeans as P

    t_start = time.perf_counter()
    console = Console()
    # ---- options and outputs first (cheap), then inputs
    if scale not in P.SCALES:
        raise UserError(f"--scale must be one of {', '.join(P.SCALES)}, got {scale!r}")
    if not 0.5 <= purity <= 1.0:
        raise UserError(f"--purity must be between 0.5 and 1, got {purity}")
    if clusters < 1:
        raise UserError(f"--clusters must be at least 1, got {clusters}")
    if target < 1:
        raise UserError(f"--target must be at least 1, got {target}")
    if not 0.0 <= tile_min_fraction < 1.0:
        raise UserError(f"--tile-min-fraction must be in [0, 1), got {tile_min_fraction}")
    if masks is not None and not tiles:
        raise UserError("--masks labels seed tiles: use it with --tiles")
    _check_out(out, "--out")
    _check_out(json_out, "--json")
    for path, what in ((out, "--out"), (json_out, "--json")):
        _refuse_inputs(path, what, truth, labeled, unlabeled, masks)
    mapper = _ray_mapper(workers, address)
    if json_out is not None and json_out.resolve() == out.resolve():
        raise UserError("--json and --out name the same file")

    seeds = labeled_folder(labeled)
    seed_keys = {p.resolve() for p, _ in seeds}
    unl_paths = [p for p in list_images(unlabeled, "unlabeled folder") if p.resolve() not in seed_keys]
    if not unl_paths:
        raise UserError(f"unlabeled folder {unlabeled} holds only seed images")
    per_image = 4 if tiles else 1
    n_items = (len(seeds) + len(unl_paths)) * per_image
    if clusters > n_items:
        raise UserError(f"--clusters {clusters} is larger than the number of "
                        f"{'tiles' if tiles else 'images'} ({n_items})")
    mask_by_stem: dict[str, Path] = {}
    if masks is not None:
        for m in list_images(masks, "masks folder"):
            mask_by_stem.setdefault(m.stem, m)
    truth_map = PF.read_truth_csv(truth) if truth is not None else None

    # ---- features
    seed_paths = [p for p, _ in seeds]
    seed_label = {p: CLASS_NAMES.index(lab) for p, lab in seeds}
    all_paths = seed_paths + unl_paths
    if tiles:
        feats, ok, skipped = PF.tile_features(all_paths, use_cache=cache, progress=True, mapper=mapper)
    else:
        feats, ok, skipped = PF.image_features(all_paths, use_cache=cache, progress=True, mapper=mapper)
    names: list[str] = []
    y: list[int] = []
    no_mask: list[Path] = []
    neg_with_mask: list[Path] = []
    for p in ok:
        if p in seed_label:
            lab = seed_label[p]
            if tiles:
                m = mask_by_stem.get(p.stem)
                if m is not None:
                    labs = PF.tile_labels_from_mask(read_mask(m), tile_min_fraction)
                    if lab == P.NON_POLYP and P.POLYP in labs:
                        neg_with_mask.append(p)
                else:
                    labs = [lab] * 4
                    if masks is not None and lab == P.POLYP:
                        no_mask.append(p)
                y += labs
            else:
                y.append(lab)
        else:
            y += [P.UNLABELED] * per_image
        names += [PF.tile_path(p, i) for i in range(4)] if tiles else [str(p)]
    if no_mask:
        import warnings

        warnings.warn(f"{len(no_mask)} polyp seed image(s) have no mask in {masks}; all their "
                      f"tiles are labeled polyp (e.g. {no_mask[0]})", stacklevel=1)
    if neg_with_mask:
        import warnings

        warnings.warn(f"{len(neg_with_mask)} non_polyp seed image(s) have mask pixels in {masks}; "
                      f"their tiles are labeled from the mask (e.g. {neg_with_mask[0]})", stacklevel=1)
    x = feats.reshape(-1, feats.shape[-1]) if len(ok) else feats.reshape(0, -1)
    y_arr = np.asarray(y, np.int64)
    unit = "tiles" if tiles else "images"
    for c, cname in enumerate(CLASS_NAMES):
        if not (y_arr == c).any():
            raise UserError(f"too few seeds: no readable {cname} seed {unit} (need at least one per class)")
    if not (y_arr == P.UNLABELED).any():
        raise UserError(f"no readable unlabeled image in {unlabeled}")
    if clusters > len(x):
        raise UserError(f"--clusters {clusters} is larger than the number of readable {unit} ({len(x)})")
    t_feat = time.perf_counter() - t_start

    truth_of = None
    if truth_map is not None:
        truth_of = PF.match_truth(names, truth_map, base=truth.parent)
        if not any(t is not None for t, lab in zip(truth_of, y_arr) if lab == P.UNLABELED):
            raise UserError(f"truth CSV {truth} names none of the unlabeled {unit}")

    # ---- propagate
    t0 = time.perf_counter()
    res = P.propagate(x, y_arr, n_clusters=clusters, target=target, purity=purity, scale=scale,
                      unit=unit)
    t_prop = time.perf_counter() - t0
    n_rows = PF.write_labels_csv(out, names, res)

    # ---- report
    from rich.table import Table

    tab = Table(title=f"label propagation ({unit}, scale={scale}, purity={purity})")
    for col in ("round", "k", "clusters used", "mixed", "+polyp", "+non_polyp", "labeled"):
        tab.add_column(col, justify="right")
    tab.add_row("0 (seeds)", "", "", "", str(res.seeds["polyp"]), str(res.seeds["non_polyp"]),
                str(sum(res.seeds.values())))
    for r in res.rounds:
        tab.add_row(str(r.round), str(r.n_clusters), str(r.clusters_used), str(r.clusters_mixed),
                    str(r.new["polyp"]), str(r.new["non_polyp"]), str(r.labeled_total))
    console.print(tab)
    style = "green" if res.target_reached else "yellow"
    console.print(f"[{style}]{res.message}[/{style}]")
    report = {
        "command": "propagate",
        "labeled_dir": str(labeled), "unlabeled_dir": str(unlabeled), "tiles": tiles,
        "clusters": clusters, "target": target, "scale": scale, "purity": purity,
        "masks": str(masks) if masks else None, "tile_min_fraction": tile_min_fraction,
        "out": str(out), "rows": n_rows, "skipped": [str(p) for p in skipped],
        **res.summary(),
    }
    if truth_of is not None:
        prop = [i for i, s in enumerate(res.source) if s == "propagated" and truth_of[i] is not None]
        n_prop = res.n_propagated
        if prop:
            rep = PF.truth_report([CLASS_NAMES[res.labels[i]] for i in prop], [truth_of[i] for i in prop])
            rep["propagated_without_truth"] = n_prop - len(prop)
            report["truth"] = rep
            tt = Table(title=f"propagated labels vs {truth.name}: accuracy {rep['accuracy']:.3f} "
                             f"({rep['n']} of {n_prop} with truth)")
            for col in ("class", "precision", "recall", "predicted", "support"):
                tt.add_column(col, justify="right")
            for cname, c in rep["classes"].items():
                f = (lambda v: "-" if v is None else f"{v:.3f}")
                tt.add_row(cname, f(c["precision"]), f(c["recall"]), str(c["predicted"]), str(c["support"]))
            console.print(tt)
        else:
            report["truth"] = None
            console.print("[yellow]no propagated label has a truth label: nothing to score[/yellow]")
    report["timing_s"] = {"features": round(t_feat, 3), "propagation": round(t_prop, 3),
                          "total": round(time.perf_counter() - t_start, 3)}
    if json_out is not None:
        write_json(json_out, report)
    console.print(f"wrote {n_rows} labels to {out} (features {t_feat:.1f} s, "
                  f"propagation {t_prop:.1f} s)")
