"""The typer application object; command modules register themselves on it."""

import typer

#: what every command's --model option falls back to (rtseg/assets/default_model)
SHIPPED_MODEL = "the shipped model (ImageNet EfficientNet-Lite1 + segmentation head, fine-tuned end to end)"

app = typer.Typer(
    name="rtseg",
    help="Real-time polyp segmentation in colonoscopy video. The shipped model: an ImageNet "
    "EfficientNet-Lite1 with a polyp classifier and a segmentation head that refines its Grad-CAM, "
    "fine-tuned end to end through augmented views from image labels and 100 seed masks; one fused "
    "ONNX graph per frame. "
    "A research tool, not a medical device.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        from rtseg import __version__

        typer.echo(f"rtseg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Real-time polyp segmentation in colonoscopy video (a research tool, not a medical device)."""
