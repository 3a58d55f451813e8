"""``rtseg batch``: an archive of videos and images through the fused graph, on Ray (resumable)."""

from __future__ import annotations

from typing import Optional

import typer

from rtseg.cli.app import SHIPPED_MODEL, app

BATCH_HELP = """Segment every video and image under --input (folder, file or quoted glob) on Ray Data.

Per video, in OUT/videos/<path>/: frames.parquet (frame, time_s, prob, mask_pixels, mask_area,
bbox_x/y/w/h of the largest component; -1 when empty), with --save-video overlay.mp4, with
--save-masks masks/NNNNNN.png. Per image folder, in OUT/images/<path>/: masks/<stem>.png and one
table images.parquet. OUT/manifest.json lists what was done and, under failed, every unreadable
file with its reason.

[bold]Resumable[/bold]: a unit's done-marker is written after its outputs, and the unit's folder
appears at once (renamed from OUT/.work): a rerun skips what is done and redoes only what a
killed run had in flight.

[bold]Exit code[/bold]: 0 = every file done; 1 = the run finished but some files failed (listed
in OUT/manifest.json under failed, and printed); 2 = bad input or options, nothing processed,
or the disk filled up (one error line; what was finished is kept); 128 + n = stopped by signal n (SIGINT 130, SIGTERM 143; finished files
are kept, a rerun goes on).

[bold]Ray[/bold]: without --address a local Ray with --workers workers is started (nothing to
set up); with --address the job runs on that cluster (rtseg installed on its nodes, input and
--out on a shared file system).
"""


@app.command(
    "batch", help=BATCH_HELP,
    epilog="Examples:\n\n"
    "  rtseg batch --input archive/ --out results/ --workers 2\n\n"
    "  rtseg batch --input 'archive/**/*.mp4' --out results/ --save-video --table csv\n\n"
    "  rtseg batch --input /shared/archive --out /shared/results --address ray://head:10001",
)
def batch(
    input: str = typer.Option(..., "--input", "-i", show_default=False,
                              help="Folder (recursive), video/image file, or quoted glob."),
    out: str = typer.Option(..., "--out", "-o", show_default=False, help="Output folder."),
    model: Optional[str] = typer.Option(
        None, "--model", "-m", help=f"Bundle folder, .onnx or .engine. Default: {SHIPPED_MODEL}."),
    workers: Optional[int] = typer.Option(
        None, "--workers", "-w", help="Ray workers (default: one per CPU core, or per --threads "
        "CPUs of the cluster)."),
    threads: int = typer.Option(1, help="Inference threads per worker."),
    address: Optional[str] = typer.Option(
        None, "--address", help="Existing Ray cluster: auto, HOST:PORT or ray://HOST:PORT. "
        "Default: start a local Ray."),
    save_video: bool = typer.Option(False, "--save-video", help="Write the overlaid video per video."),
    save_masks: bool = typer.Option(False, "--save-masks", help="Write a mask PNG per video frame."),
    table: str = typer.Option("parquet", help="Table format: parquet or csv."),
    backend: str = typer.Option("auto", help="auto, torch, onnxruntime or tensorrt."),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N]."),
    batch_size: int = typer.Option(1, "--batch", help="Frames per segmenter call."),
    smooth: float = typer.Option(0.0, help="CAM moving average across frames (as rtseg stream)."),
    call_smoothing: Optional[float] = typer.Option(
        None, "--call-smoothing", help="Videos: the frame call's moving average across frames, "
        "p = a*previous + (1-a)*new, a in [0, 0.8]; a mask is shown only where it says polyp "
        "(0: every frame alone). Default: the model's (chosen by cross-validation)."),
    heatmap: bool = typer.Option(False, "--heatmap", help="Saved videos: blend the CAM as a heat map."),
    alpha: float = typer.Option(0.4, help="Saved videos: opacity of the overlay, 0..1."),
    layer: Optional[str] = typer.Option(None, help="CAM layer override (block index or 'head')."),
    chunk: int = typer.Option(256, help="Images per work unit."),
) -> None:
    import sys

    from rtseg.batch.run import BatchConfig, run_batch
    from rtseg.model.arch import parse_layer

    workers = _cap_workers(workers, threads, address)
    cfg = BatchConfig(input=input, out=out, model=model, backend=backend, device=device,
                      workers=workers, threads=threads, address=address, save_video=save_video,
                      save_masks=save_masks, table=table, batch=batch_size, smooth=smooth,
                      call_smoothing=call_smoothing, alpha=alpha, heatmap=heatmap,
                      layer=parse_layer(layer), chunk=chunk)
    from rtseg.atomic import removed_if_failed

    with removed_if_failed(out):  # a run that fails at once leaves no folder with a lone .lock
        manifest = run_batch(cfg)
    failed, files = manifest["totals"]["failed"], manifest["totals"]["files"]
    if failed:  # exit code 1: finished, with failures (the help's rule; scripts can tell)
        print(f"error: {failed} of {files} file(s) failed; the reasons are in "
              f"{manifest['out']}/manifest.json under failed", file=sys.stderr)
        raise typer.Exit(FINISHED_WITH_FAILURES)


FINISHED_WITH_FAILURES = 1


def _cap_workers(workers: Optional[int], threads: int, address: Optional[str]) -> Optional[int]:
    """A local Ray gets at most one worker per --threads CPU cores here (more only compete for
    the cores and multiply the memory): capped with a warning."""
    import warnings

    from rtseg.batch.run import cpu_cores

    if workers is None or address is not None or threads < 1 or workers < 1:
        return workers
    most = max(1, cpu_cores() // threads)
    if workers > most:
        warnings.warn(f"--workers {workers} is more than this machine's {cpu_cores()} CPU "
                      f"core(s) allow at --threads {threads}: using {most}", stacklevel=1)
        return most
    return workers
