"""``rtseg stream`` (the live loop) and ``rtseg bench`` (speed of the runtime backends)."""

from __future__ import annotations

from typing import Optional

import typer

from rtseg.cli.app import SHIPPED_MODEL, app


@app.command(
    "stream",
    epilog="Examples:\n\n"
    "  rtseg stream                                   # synthetic demo clip, window\n\n"
    "  rtseg stream --source 0                        # camera or capture card 0\n\n"
    "  rtseg stream --source clip.mp4 --headless --save out.mp4 --json stats.json\n\n"
    "  rtseg stream --source frames/ --smooth 0.6 --heatmap --max-frames 500",
)
def stream(
    source: Optional[str] = typer.Option(
        None, "--source", "-s",
        help="Video file, camera index (0), stream URL (rtsp/http), folder of frames or one "
        "image. Default: a generated SYNTHETIC DEMO clip."),
    model: Optional[str] = typer.Option(
        None, "--model", "-m", help=f"Bundle folder, .onnx or .engine. Default: {SHIPPED_MODEL}."),
    backend: str = typer.Option("auto", help="auto, torch, onnxruntime or tensorrt."),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N]."),
    headless: bool = typer.Option(False, "--headless", help="No window (servers, benchmarks)."),
    save: Optional[str] = typer.Option(
        None, "--save", help="Write the overlaid video (mp4v) at the source's fps."),
    max_frames: Optional[int] = typer.Option(None, "--max-frames", help="Stop after N frames."),
    json_out: Optional[str] = typer.Option(
        None, "--json", help="Write fps (Table 2 layout), stage times and frame counts as JSON."),
    alpha: float = typer.Option(0.4, help="Opacity of the mask / heat-map overlay, 0..1."),
    smooth: float = typer.Option(
        0.0, help="CAM moving average across frames: cam = a*previous + (1-a)*new, a in [0, 1)."),
    call_smoothing: Optional[float] = typer.Option(
        None, "--call-smoothing", help="The frame call's moving average across frames, "
        "p = a*previous + (1-a)*new, a in [0, 0.8]; a mask is shown only where it says polyp "
        "(0: every frame alone). Default: the model's (chosen by cross-validation)."),
    heatmap: bool = typer.Option(False, "--heatmap", help="Blend the CAM as a JET heat map."),
    batch: int = typer.Option(1, help="Frames per segmenter call."),
    loop: bool = typer.Option(False, "--loop", help="Start a file/folder again at its end."),
    fp16: bool = typer.Option(False, "--fp16", help="Half precision (GPU backends)."),
    layer: Optional[str] = typer.Option(None, help="CAM layer override (block index or 'head')."),
    log_every: float = typer.Option(5.0, help="Seconds between progress lines (0: none)."),
    threads: int = typer.Option(0, help="CPU threads for the segmenter (0: its default)."),
) -> None:
    """Segment polyps live: capture, mask overlay, fps log (q/Esc quits, space pauses).

    Per frame the model gives a polyp probability and a mask (the shipped model: its
    segmentation head's map); the call is averaged across frames (--call-smoothing) and the
    frame's mask is drawn only while the call says polyp.
    """
    from rtseg.atomic import refuse_inputs
    from rtseg.shutdown import loop_shutdown

    refuse_inputs(save, "--save", source)  # the source video itself: never overwritten
    refuse_inputs(json_out, "--json", source)
    # flag mode from the start (rtseg.cli.main): a signal during the imports is not lost, one
    # during the model load stops it at once (run_stream writes the stats with 0 frames)
    with loop_shutdown() as stop:
        from rtseg.model.arch import parse_layer
        from rtseg.live.loop import StreamConfig, run_stream

        _threads(threads)
        cfg = StreamConfig(source=source, model=model, backend=backend, device=device,
                           fp16=True if fp16 else None, threads=threads,
                           layer=parse_layer(layer), headless=headless, save=save,
                           max_frames=max_frames, json=json_out, alpha=alpha, smooth=smooth,
                           call_smoothing=call_smoothing, heatmap=heatmap, batch=batch, loop=loop,
                           log_every=log_every)
        res = run_stream(cfg, shutdown=stop)
    if res.interrupted:  # the video and the stats are complete; the shell sees 128 + signal
        raise typer.Exit(res.exit_code)


@app.command(
    "bench",
    epilog="Examples:\n\n"
    "  rtseg bench --frames 100        # all backends + baseline, batch 1 and 8\n\n"
    "  rtseg bench --backend torch --batch 1 --source clip.mp4 --json bench.json",
)
def bench(
    model: Optional[str] = typer.Option(
        None, "--model", "-m", help=f"Bundle folder, .onnx or .engine. Default: {SHIPPED_MODEL}."),
    backend: str = typer.Option("all", help="all, torch, onnxruntime or tensorrt."),
    size: Optional[int] = typer.Option(
        None, help="Expected model input size (checked against the model's)."),
    batch: str = typer.Option("1,8", help="Batch sizes, comma-separated."),
    frames: int = typer.Option(200, help="Frames timed per row (after warm-up)."),
    source: Optional[str] = typer.Option(
        None, "--source", help="Time the whole headless loop on this video instead of the model alone."),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N]."),
    no_baseline: bool = typer.Option(False, "--no-baseline", help="Skip the pytorch-grad-cam baseline."),
    json_out: Optional[str] = typer.Option(None, "--json", help="Write the rows as JSON."),
    threads: int = typer.Option(0, help="CPU threads for the segmenters (0: their default)."),
) -> None:
    """Time each runtime backend and the pytorch-grad-cam baseline (paper's Table 2 layout)."""
    from rtseg.atomic import refuse_inputs
    from rtseg.live.bench import parse_batches, run_bench
    from rtseg.model.bundle import BUNDLE_FILES

    refuse_inputs(json_out, "--json", source, model)  # the video, an .onnx / .engine model
    refuse_inputs(json_out, "--json", model, folder_kinds=BUNDLE_FILES)  # in a bundle folder
    _threads(threads)
    run_bench(model=model, backend=backend, size=size, batches=parse_batches(batch),
              frames=frames, source=source, device=device, baseline=not no_baseline,
              json_path=json_out, threads=threads)


def _threads(n: int) -> None:
    from rtseg.errors import UserError

    if n < 0:
        raise UserError("--threads must be 0 (default) or more")
    if n:
        import torch

        torch.set_num_threads(n)
