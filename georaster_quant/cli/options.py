"""Options shared by several commands, and the ``--config`` loader."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from georaster_quant.config import load_config

F = Callable[..., Any]
#: The most threads ``--workers`` may ask for: beyond it a typo would fail to start threads.
MAX_THREADS = 1024


def _load_config(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value and ctx.command is not None:
        ctx.default_map = {**(ctx.default_map or {}), **load_config(value, ctx.command)}
    return value


def config_option(f: F) -> F:
    """``--config FILE``: read option values from YAML; flags given on the command line win."""
    return click.option(
        "--config",
        type=click.Path(dir_okay=False),
        is_eager=True,
        expose_value=False,
        callback=_load_config,
        help="YAML file with option values (flat, or one section per command); flags win.",
    )(f)


def parse_bands(
    _ctx: click.Context, _param: click.Parameter, value: str | None
) -> list[int] | None:
    """Parse ``--bands 3,2,1,4`` into 1-based band indexes."""
    if value is None:
        return None
    try:
        bands = [int(v) for v in str(value).split(",")]
    except ValueError:
        raise click.BadParameter(
            f"expected comma-separated band numbers such as 3,2,1,4, got {value!r}"
        ) from None
    if min(bands) < 1:
        raise click.BadParameter(f"band numbers start at 1, got {value!r}")
    twice = sorted({b for b in bands if bands.count(b) > 1})
    if twice:
        raise click.BadParameter(f"band(s) {twice} given more than once in {value!r}")
    return bands


image_option = click.option(
    "--image",
    required=True,
    type=click.Path(dir_okay=False),
    help="Input raster (GeoTIFF, COG, VRT).",
)
labels_option = click.option(
    "--labels",
    required=True,
    type=click.Path(dir_okay=False),
    help="Label raster on the image's pixel grid (uint8 class index, nodata ignored).",
)
stride_option = click.option(
    "--stride",
    type=click.IntRange(min=1),
    default=None,
    help="Prediction grid stride in pixels (default: the bundle's, = tile size).",
)
batch_size_option = click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=32,
    show_default=True,
    help="Tiles per model call.",
)
bands_option = click.option(
    "--bands",
    callback=parse_bands,
    default=None,
    help="Raster bands (1-based) to feed the model, in the model's band order, e.g. 3,2,1,4.",
)
overwrite_option = click.option("--overwrite", is_flag=True, help="Replace an existing output.")
quiet_option = click.option(
    "-q", "--quiet", is_flag=True, help="No progress bars (they only show on a terminal anyway)."
)


def show_progress(quiet: bool) -> bool:
    """Progress bars go to stderr, and only when it is a terminal and --quiet is not given."""
    return not quiet and sys.stderr.isatty()


backend_option = click.option(
    "--backend",
    type=click.Choice(["auto", "torch", "torchscript", "onnxruntime"]),
    default="auto",
    show_default=True,
    help="auto: ONNX Runtime for a .onnx file or a bundle holding an up-to-date model.onnx, "
    "TorchScript for .pt, eager torch for other bundles.",
)
onnx_option = click.option(
    "--onnx/--no-onnx",
    default=True,
    show_default=True,
    help="Also export the new bundle to model.onnx inside it, so that predict and evaluate "
    "run it on ONNX Runtime (--backend auto), the fastest backend measured here.",
)
