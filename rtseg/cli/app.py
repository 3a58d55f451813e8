"""The typer application object; command modules register themselves on it."""

import typer

app = typer.Typer(
    name="rtseg",
    help="Real-time polyp segmentation in colonoscopy video without pixel labels "
    "(label propagation, EfficientNet-b1 classifier, fused Grad-CAM).",
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
    """Real-time polyp segmentation without pixel labels."""
